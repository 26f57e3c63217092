"""The Gradio app: rendering, the handlers called directly over a Studio, building, and the API end to end."""

import json
import re
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import app
from inference.card import group_rule_text
from inference.classifier import ClassScore, OnnxClassifier
from inference.limits import Limits as ServiceLimits
from inference.service import ClassChoice, Generation, Limits, ModelCatalog, Recognition, Studio
from studio_app import charts, render
from studio_app.handlers import Handlers, generate_here, warm_generator
from tests.helpers_onnx import METRICS, make_card, tiny_net_path, write_model
from tests.helpers_servers import gradio_launched

TAU_GRID = [t / 4 for t in range(-4, 9)]  # −1 … 2 in steps of 0.25, as export stores it
# A made-up τ curve in the contract's shape: overall falls away from τ = 0, the tail rises with τ.
TAU_CURVE = [{"tau": t, "overall": 70.0 - 4 * t * t, "groups": {"head": 90.0 - 10 * t, "medium": 70.0, "tail": 40.0 + 10 * t},
              "ece": 5.0, "group_ece": {"head": 3.0, "medium": 5.0, "tail": 41.0}} for t in TAU_GRID]
LONG_TAIL = {
    "class_accuracy": [90.0, 70.0, 40.0],
    "confusion": [[90, 5, 5], [20, 70, 10], [50, 10, 40]],
    "calibration": {group: {"ece": ece, "bins": [{"confidence": 100 * (b + 0.5) / 15, "accuracy": 50.0, "count": b % 3}
                                                  for b in range(15)]}
                    for group, ece in (("head", 3.0), ("medium", 5.0), ("tail", 41.0))},
}


def scores():
    return [
        ClassScore(0, "cat", 0.7, 500, "many"),
        ClassScore(1, "<b>dog</b>", 0.2, 60, "medium"),
        ClassScore(2, "bird", 0.1, 7, "few"),
    ]


def save_image(path, colour=(200, 30, 30), size=(40, 40)):
    Image.new("RGB", size, colour).save(path)
    return str(path)


def ignore_progress(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """tiny.onnx, as exported before the τ curve was stored, and curved.onnx, with the curve and the pictures."""
    folder = tmp_path_factory.mktemp("zoo")
    write_model(tiny_net_path(tmp_path_factory), folder / "tiny.onnx", make_card())
    write_model(tiny_net_path(tmp_path_factory), folder / "curved.onnx",
                make_card(tau_curve=TAU_CURVE, long_tail=LONG_TAIL))
    return folder


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory):
    from conftest import write_tiny_generator

    return write_tiny_generator(tmp_path_factory.mktemp("generator") / "tiny", ["cat", "dog", "bird"])


@pytest.fixture(scope="module")
def studio(models_dir, generator_dir):
    """The app's own Studio (app.build_studio) on the tiny model and a tiny random generator for its classes."""
    return app.build_studio(models_dir, generator=generator_dir)


@pytest.fixture(scope="module")
def handlers(studio):
    return Handlers(studio)


# --- Rendering ------------------------------------------------------------------------------


def test_top_classes_chart_is_most_probable_first_in_group_colours():
    html = render.top_classes_html(scores()[::-1])
    assert html.index("cat") < html.index("&lt;b&gt;dog&lt;/b&gt;") < html.index("bird")
    assert "<b>dog</b>" not in html  # names are escaped
    assert "70.0%" in html and "10.0%" in html
    assert "500 training images" in html and "7 training images" in html
    for colour in render.GROUP_COLOURS.values():
        assert colour in html
    assert all(word in html for word in ("head", "medium", "tail"))  # the legend
    assert "min-width:3px" in html  # a 0.0 % bar still shows


def test_top_classes_without_training_counts():
    html = render.top_classes_html([ClassScore(0, "x", 1.0, None, None)])
    assert "count unknown" in html and render.UNKNOWN_COLOUR in html


def test_histogram_is_sorted_by_count():
    card = make_card(class_names=["rare", "common", "middle"], class_counts=[3, 900, 50], class_groups=["few", "many", "medium"])
    html = render.histogram_html(card)
    assert html.index("common") < html.index("middle") < html.index("rare")
    assert "900" in html and ">3<" in html


def test_group_rule_text():
    text = group_rule_text(make_card())
    assert "more than 100" in text and "fewer than 20" in text
    assert "head: 1, medium: 1, tail: 1" in text
    rank = group_rule_text(make_card(group_rule={"rule": "rank", "head_fraction": 0.3, "tail_fraction": 0.25}))
    assert "the 30% of classes with the most training images" in rank and "the 25% with the fewest" in rank
    other = group_rule_text(make_card(group_rule={"rule": "quantile", "q": 0.5}))
    assert "'quantile'" in other and "q = 0.5" in other
    assert "unknown" in group_rule_text(make_card(group_rule={"rule": "unknown"}))


def test_metrics_table_has_one_row_per_checkpoint_and_the_cards_groups():
    html = render.metrics_html(make_card())
    assert "Last epoch, epoch 200" in html and "Val-selected (chosen on validation), epoch 180" in html
    assert ">71.5<" in html and ">72.0<" in html and ">43.5<" in html
    assert ">73.0<" not in html  # the validation split is not a test accuracy
    assert "rank" not in html  # only the card's own grouping rule
    assert "overflow-x:auto" in html  # scrolls inside itself on a phone
    assert "oracle" not in html and "optimistic" not in html


def test_metrics_table_labels_the_test_selected_epoch_and_explains_empty_groups():
    metrics = dict(METRICS, test_oracle_best={"epoch": 150, "test": {"overall": 74.0}, "note": "selected on test"})
    html = render.metrics_html(make_card(metrics=metrics))
    assert "Test-selected (optimistic), epoch 150" in html and ">74.0<" in html
    no_tail = make_card(class_groups=["many", "medium", "medium"])
    assert "“–”: no class is in the tail group" in render.metrics_html(no_tail)


def test_metrics_table_renders_what_is_there():
    only_last = {"last_epoch": {"epoch": 5, "test": {"overall": 50.0}}}
    html = render.metrics_html(make_card(metrics=only_last))
    assert "Last epoch, epoch 5" in html and ">50.0<" in html and "Val-selected" not in html
    assert "No evaluation results" in render.metrics_html(make_card(metrics={}))


def test_card_in_plain_words_and_captions(models_dir):
    classifier = OnnxClassifier(models_dir / "tiny.onnx")
    text = render.card_markdown(classifier.card, classifier)
    for expected in ("**Method:** Cross-entropy — plain cross-entropy", "**Dataset:** toy-lt (`toy-lt`)", "**Imbalance factor:** 71.4",
                     "tinynet", "**Runs on:** CPU, with ONNX Runtime", "`tiny.onnx`"):
        assert expected in text
    assert "abc1234" not in text and "ExecutionProvider" not in text
    assert f"**Input:** {classifier.card.preprocessing.describe()}, classified" in text  # the card document's words
    [prediction] = classifier.predict([Image.new("RGB", (32, 32))], top_k=3)
    assert re.fullmatch(r"\w+ · (head|medium|tail) class · [\d,]+ training images? · \d\.\d\d", render.caption(prediction))
    assert render.prediction_markdown("x.png", prediction).startswith(f"**{prediction.top[0].name}** · ")
    assert render.prediction_markdown("x.png", prediction, tau=0.5).endswith("with τ = 0.5")


def test_the_model_menu_reads_like_the_card():
    groups = {"rank": {"many": 80.3, "medium": 69.2, "few": 82.17}}
    card = make_card(method="concutmix", model_name="resnet32", dataset="cifar10_lt", group_rule={"rule": "rank"},
                     metrics={"val_selected": {"epoch": 55, "test": {"overall": 76.41, "groups": groups}}},
                     checkpoint={"which": "val-selected", "epoch": 55})
    assert render.model_label("x.onnx", card) == "ConCutMix · ResNet-32 · CIFAR-10-LT · 76% test, 82% tail"
    trained = replace(card, config={"optim": {"epochs": 200}})  # the budget, when the card records the config
    assert render.model_label("x.onnx", trained) == "ConCutMix · ResNet-32 · CIFAR-10-LT · 200 epochs · 76% test, 82% tail"
    pretrained = replace(card, model_name="efficientnet_lite0",
                         config={"optim": {"epochs": 8}, "model": {"pretrained": "imagenet"}})
    assert render.model_label("x.onnx", pretrained) == ("ConCutMix · EfficientNet-Lite0 (pretrained) · CIFAR-10-LT · "
                                                        "8 epochs · 76% test, 82% tail")
    assert render.model_label("x.onnx", make_card(metrics={})) == "Cross-entropy · tinynet · toy-lt"
    assert render.model_label("x.onnx", None) == "x.onnx"


def test_result_cards_show_picture_prediction_group_count_and_probability(models_dir):
    classifier = OnnxClassifier(models_dir / "tiny.onnx")
    small, large = Image.new("RGB", (32, 32), (9, 9, 9)), Image.new("RGB", (800, 600), (200, 9, 9))
    predictions = classifier.predict([small, large], top_k=2)
    items = [{"image": f"{i}.png", "prediction": p, **render.picture(image)}
             for i, (p, image) in enumerate(zip(predictions, [small, large]))]
    html = render.results_html(items)
    assert html.count('class="lt-card"') == 2 and html.count("data:image/") == 2
    assert html.count("image-rendering:pixelated") == 1  # the 32×32 one is enlarged crisply, the photo is not
    best = predictions[0].top[0]
    assert f"<b>{best.name}</b>" in html and render.GROUP_COLOURS[best.group] in html
    assert f"{best.train_count:,} training images · <b>{best.probability:.0%}</b>" in html
    assert "image/jpeg" in render.picture(large)["uri"][:20]


def test_the_tau_effect_comes_from_the_card_and_says_why_when_absent():
    text = charts.tau_effect_html(make_card(tau_curve=TAU_CURVE), 0.5)
    assert "At τ = 0.5" not in text and "On the test set at <b>τ = 0.5</b>" in text
    assert "<b>69.0%</b> overall" in text and "tail 45.0%" in text and "As trained (τ = 0): <b>70.0%</b>" in text
    assert "<svg" in text and "lt-tau-marker" in text
    assert "the curve stops at τ = 2" in charts.tau_effect_html(make_card(tau_curve=TAU_CURVE), 3.0)
    assert "has no τ curve" in charts.tau_effect_html(make_card(), 0.5)
    assert "no training counts" in charts.tau_effect_html(make_card(group_rule={"rule": "unknown"}), 0.5)


def test_long_tail_pictures_or_one_line_without_them():
    html = charts.long_tail_html(make_card(long_tail=LONG_TAIL))
    assert html.count("<svg") == 3 and "log scale" in html and "tail (ECE 41.0)" in html
    assert "Confusion matrix" in html and "true bird, predicted cat: 50%" in html
    assert 'viewBox="0 0' in html and "width:100%" in html  # shrinks to a phone's width
    assert "has no long-tail pictures" in charts.long_tail_html(make_card())


def test_example_captions_mark_tail_classes():
    card = make_card()
    assert render.example_caption(Path("cifar10_test_0025_bird.png"), card) == "bird ★"
    assert render.example_caption(Path("cifar10_test_0000_cat.png"), card) == "cat"
    assert render.example_caption(Path("photo.png"), card) == "photo"


def generation(recognitions, count=None):
    return Generation(
        images=[Image.new("RGB", (8, 8))] * len(recognitions), recognitions=recognitions,
        settings={"class_name": "bird", "count": count or len(recognitions), "seed": 3, "first_index": 0, "steps": 2,
                  "guidance": 1.0, "seeds": list(range(len(recognitions))), "model": "tiny.onnx",
                  "generator": {"model_id": "tiny"}},
    )


def test_class_choice_labels_and_generation_captions():
    assert render.class_choice_label(ClassChoice("bird", 2, 7, "few")) == "bird · tail · 7 training images"
    assert render.class_choice_label(ClassChoice("x", 0, None, None)) == "x"
    made = generation([Recognition("bird", "bird", 0.82, 0.82), Recognition("bird", "dog", 0.6, 0.25)])
    assert render.generated_caption(made, 0) == "recognised as bird · 0.82"
    assert render.generated_caption(made, 1) == "recognised as dog · 0.60 (bird 0.25)"
    assert "**1 of 2** recognised as bird by tiny.onnx: that one is the sample most likely" in render.generation_summary(made)


def test_the_generation_verdict_fits_any_number_recognised():
    miss, hit = Recognition("bird", "dog", 0.6, 0.25), Recognition("bird", "bird", 0.8, 0.8)
    none = render.generation_summary(generation([miss] * 16))
    assert "**0 of 16** recognised as bird" in none and "none of these" in none and "most likely to help" not in none
    assert "those are the samples" in render.generation_summary(generation([hit, hit, miss]))
    assert "all of them" in render.generation_summary(generation([hit, hit]))
    kept = render.generation_summary(generation([hit, hit], count=4), tried=16)
    assert "Kept **2** of 16 samples tried" in kept and "4 images asked for" in kept
    assert "(none passed;" in render.generation_summary(generation([], count=4), tried=16)


def test_generator_note_never_shows_a_server_path(tmp_path):
    status = {"available": True, "source": str(tmp_path / "model_zoo" / "gen")}
    assert "Generator: `model_zoo/gen`" in render.generator_status_markdown(status, tmp_path)
    elsewhere = render.generator_status_markdown(status, tmp_path / "elsewhere")
    assert "Generator: `gen`" in elsewhere and str(tmp_path) not in elsewhere
    assert "Generator: `alice/sd-tiny`" in render.generator_status_markdown({"available": True, "source": "alice/sd-tiny"})
    missing = render.generator_status_markdown({"available": False, "error": "no generator configured"})
    assert "**Generation is not available:** no generator configured" in missing
    assert str(tmp_path) not in render.no_models_message(tmp_path / "zoo") and "`zoo`" in render.no_models_message(tmp_path / "zoo")


# --- Classify, through the handlers ---------------------------------------------------------


def test_classify_shows_every_image_and_the_details_of_the_one_picked(handlers, tmp_path):
    paths = [save_image(tmp_path / f"image{i}.png", colour) for i, colour in enumerate([(255, 0, 0), (0, 0, 255)])]
    gallery, label, bars, summary, messages, records, state = handlers.classify("tiny.onnx", paths, 3)
    assert len(gallery) == 2 and "image0.png" in summary and messages == ""
    assert label == {s["name"]: s["probability"] for s in records[0]["top_k"]}  # the first image's top-k
    # Files written whole, not PIL images (which Gradio rewrites in place under a shared path: see OutputFiles).
    assert all(isinstance(item, str) and Image.open(item).size == (40, 40) for item, _ in gallery)
    assert all(re.search(r" · (head|medium|tail) class · ", caption) for _, caption in gallery)
    assert "lt-legend" in bars and bars.count('class="lt-row"') == 3
    cards, bars, summary = handlers.show_details(state, 1)
    assert "image1.png" in summary and cards.count('class="lt-card"') == 2
    assert records[1]["top_k"][0]["name"] in bars
    pairs, cards, bars, *_, state = handlers.classify_page("tiny.onnx", paths, 2)
    assert len(pairs) == 2 and cards.count('class="lt-card"') == 2 and bars.count('class="lt-row"') == 2
    picker = handlers.details_picker(state)
    assert picker.visible and [value for _, value in picker.choices] == [0, 1]
    assert not handlers.details_picker(handlers.classify_page("tiny.onnx", paths[:1], 2)[-1]).visible  # one image


def test_tau_moves_predictions_towards_the_tail(handlers, tmp_path):
    """logits − τ·log(prior): with counts 500 / 60 / 7, τ = 2 lifts the tail class far above τ = 0."""
    image = save_image(tmp_path / "grey.png", (120, 120, 120), (32, 32))
    records = {tau: handlers.classify("tiny.onnx", [image], 3, tau)[5][0] for tau in (0.0, 2.0, -1.0)}
    bird = {tau: next(c["probability"] for c in r["classes"] if c["name"] == "bird") for tau, r in records.items()}
    assert bird[-1.0] < bird[0.0] < bird[2.0]
    assert [r["tau"] for r in records.values()] == [0.0, 2.0, -1.0]
    with pytest.raises(gr.Error, match="tau must be a number from -5 to 5"):
        handlers.classify("tiny.onnx", [image], 3, 6)
    assert "has no τ curve" in handlers.tau_effect("tiny.onnx", 1.0)
    assert "On the test set at <b>τ = 1</b>" in handlers.tau_effect("curved.onnx", 1.0)


def test_classify_reports_unreadable_files_in_upload_order(handlers, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_text("this is text")
    good = save_image(tmp_path / "photo.png")
    with pytest.warns(UserWarning, match="broken.jpg is not an image file"):  # a brief toast (gr.Warning)
        gallery, _, _, _, messages, records, state = handlers.classify("tiny.onnx", [str(bad), good], 2)
    assert [r["image"] for r in records] == ["broken.jpg", "photo.png"] and "error" in records[0]
    assert len(gallery) == 1 and "**Could not read 1 of 2 files:**" in messages and "not an image file" in messages
    assert [item["image"] for item in state["items"]] == ["photo.png"]


def test_images_are_loaded_by_the_studio_under_its_limits(models_dir, tmp_path):
    """The handlers go through the service, so its limits hold in the app as over HTTP."""
    limited = Handlers(Studio(ModelCatalog(models_dir), limits=Limits(max_pixels=1000, max_batch=2)))
    with pytest.warns(UserWarning, match="above the limit of 0.001 megapixels"):
        records = limited.classify("tiny.onnx", [save_image(tmp_path / "big.png", size=(40, 40))], 1)[5]
    assert "above the limit of 0.001 megapixels" in records[0]["error"]
    with pytest.raises(gr.Error, match="3 images in one request; the limit is 2"):
        limited.classify("tiny.onnx", [save_image(tmp_path / f"{i}.png") for i in range(3)], 1)


def test_the_app_takes_as_many_files_as_the_http_service():
    assert app.LIMITS == ServiceLimits()


def test_classify_without_images_or_model(handlers, tmp_path):
    assert handlers.classify("tiny.onnx", [], 5) == ([], None, "", "", "Upload one or more images to classify them.",
                                                    [], {"items": []})
    with pytest.raises(gr.Error, match="No model selected"):
        handlers.classify(None, [save_image(tmp_path / "x.png")], 5)
    with pytest.raises(gr.Error, match="not found"):
        handlers.classify("missing.onnx", [], 5)  # a bad model is reported before any upload
    assert handlers.show_details({"items": []}, 0) == ("", "", "")


def test_model_card(handlers, tmp_path):
    summary, histogram, metrics = handlers.model_card("tiny.onnx")
    pictures = handlers.long_tail_pictures("tiny.onnx")
    assert "### Cross-entropy · tinynet · toy-lt" in summary and "more than 100" in summary
    assert histogram.index("cat") < histogram.index("dog") < histogram.index("bird")
    assert "Val-selected (chosen on validation), epoch 180" in metrics
    assert "has no long-tail pictures" in pictures
    assert handlers.long_tail_pictures("curved.onnx").count("<svg") == 3
    empty = Handlers(Studio(ModelCatalog(tmp_path / "empty")))
    assert empty.model_card(None)[0].startswith("**No models found.**")


def test_the_model_menu_and_the_examples(handlers, tmp_path):
    assert handlers.model_choices() == [("Cross-entropy · tinynet · toy-lt · 72% test, 44% tail", "curved.onnx"),
                                        ("Cross-entropy · tinynet · toy-lt · 72% test, 44% tail", "tiny.onnx")]
    examples = Handlers(handlers.studio, examples=[tmp_path / "a.png", tmp_path / "b.png"])
    assert examples.example(gr.SelectData(None, {"index": 1, "value": None})) == [str(tmp_path / "b.png")]


# --- Generate, through the handlers ---------------------------------------------------------


def test_generator_classes_list_tail_classes_first(handlers):
    dropdown = handlers.generator_classes("tiny.onnx")
    assert dropdown.choices == [("bird · tail · 7 training images", "bird"), ("dog · medium · 60 training images", "dog"),
                                ("cat · head · 500 training images", "cat")]
    assert dropdown.value == "bird"


def test_generate_reports_progress_and_gives_files(handlers):
    calls = []
    gallery, download, summary, records = handlers.generate(
        "tiny.onnx", "bird", 3, 2, 5, 1.0, lambda value, **kwargs: calls.append((value, kwargs.get("desc"))))
    assert calls[0][0] == 0.0 and calls[0][1]  # something shows from the first moment
    assert [value for value, _ in calls[1:]] == [(1, 2), (2, 2)]  # then the bar follows the denoising steps
    assert len(gallery) == 3 and all(caption.startswith("recognised as ") for _, caption in gallery)
    assert "3 images asked for, seed 5, 2 steps" in summary
    assert [image["seed"] for image in records["images"]] == records["seeds"]
    assert "trained" not in records["generator"] and not Path(records["generator"]["source"]).is_absolute()
    with zipfile.ZipFile(download) as archive:
        names = archive.namelist()
        assert sorted(names) == ["bird_seed5_000.png", "bird_seed5_001.png", "bird_seed5_002.png", "generation.json"]
        assert Image.open(archive.open(names[0])).size == (16, 16)
        assert json.loads(archive.read("generation.json"))["steps"] == 2

    again = handlers.generate("tiny.onnx", "bird", 1, 2, 5, 1.0, ignore_progress)[0]
    # Image 0 does not depend on the count; the gallery gets files (see studio_app.files), PNG so lossless.
    assert np.array_equal(np.asarray(Image.open(again[0][0])), np.asarray(Image.open(gallery[0][0])))
    cards = handlers.generate_page("tiny.onnx", "bird", 2, 2, 5, 1.0, False, ignore_progress)[0]
    assert cards.count('class="lt-card"') == 2 and "recognised as" in cards


def every_third_recognised(studio, model_name, class_name, count, steps, seed, guidance, progress, first_index=0):
    """A runner whose images at index 0, 3, 6, ... of the class are recognised as it, the others as "dog"."""
    made = generate_here(studio, model_name, class_name, count, steps, seed, guidance, progress, first_index)
    made.recognitions = [Recognition(class_name, class_name if (first_index + i) % 3 == 0 else "dog", 0.9, 0.1)
                         for i in range(count)]
    return made


def test_keep_only_recognised_samples_on_until_enough_or_four_times_the_count(studio):
    handlers = Handlers(studio, run_generation=every_third_recognised)
    gallery, download, summary, records = handlers.generate("tiny.onnx", "bird", 3, 2, 0, 1.0, ignore_progress,
                                                            keep_recognised=True)
    assert [image["index"] for image in records["images"]] == [0, 3, 6] and records["tried"] == 9
    assert all(image["matches"] for image in records["images"]) and len(gallery) == 3
    assert "Kept **3** of 9 samples tried" in summary
    with zipfile.ZipFile(download) as archive:
        assert sorted(archive.namelist()) == ["bird_seed0_000.png", "bird_seed0_003.png", "bird_seed0_006.png",
                                              "generation.json"]
    # Image 3 of the seed is the same as when it is made in a batch of its own.
    alone = handlers.generate("tiny.onnx", "bird", 4, 2, 0, 1.0, ignore_progress)[0][3]
    assert np.array_equal(np.asarray(Image.open(alone[0])), np.asarray(Image.open(gallery[1][0])))

    never = Handlers(studio, run_generation=lambda *args: every_third_recognised(*args[:8], first_index=1))
    records = never.generate("tiny.onnx", "bird", 2, 2, 0, 1.0, ignore_progress, keep_recognised=True)[3]
    assert records["tried"] == 8 and records["kept"] == 0  # bounded: 4 × the count asked for


def test_generate_runs_through_the_runner_it_is_given(studio):
    """app.py hands its spaces.GPU-decorated run_generation to the handlers: generation goes through it."""
    calls = []

    def runner(*args):
        calls.append(args[1:7] + args[8:])
        return app.run_generation(*args)

    Handlers(studio, run_generation=runner).generate("tiny.onnx", "dog", 1, 2, 0, 1.0, ignore_progress)
    assert calls == [("tiny.onnx", "dog", 1, 2, 0, 1.0, 0)]


def test_the_generator_is_opened_in_the_background(models_dir, generator_dir):
    studio = app.build_studio(models_dir, generator=generator_dir)
    assert not studio.generator.describe()["loaded"]
    warm_generator(studio).join(120)
    assert studio.generator.describe()["loaded"]
    assert warm_generator(Studio(ModelCatalog(models_dir))) is None  # no generator configured


def test_generate_errors_are_messages(handlers, models_dir, monkeypatch):
    with pytest.raises(gr.Error, match="Pick a class"):
        handlers.generate("tiny.onnx", "", 1, 2, 0, 1.0, ignore_progress)
    with pytest.raises(gr.Error, match="has no class 'zebra'"):
        handlers.generate("tiny.onnx", "zebra", 1, 2, 0, 1.0, ignore_progress)
    with pytest.raises(gr.Error, match="count must be an integer from 1 to 16"):
        handlers.generate("tiny.onnx", "bird", 17, 2, 0, 1.0, ignore_progress)

    # A text-to-image model that is not in the local cache, with HF_HUB_OFFLINE set (conftest).
    offline = Handlers(app.build_studio(models_dir, generator="no-such-user/no-such-model"))
    assert offline.generator_classes("tiny.onnx").choices[0][1] == "bird"  # the model's classes
    with pytest.raises(gr.Error, match="offline"):
        offline.generate("tiny.onnx", "bird", 1, 2, 0, 1.0, ignore_progress)
    # The failure is remembered: the next request is refused without trying the Hub again, and the UI says so.
    monkeypatch.setattr("inference.generators.open_generator", lambda *a, **k: pytest.fail("opened a second time"))
    status = offline.studio.generator.describe()
    assert not status["available"] and "offline" in status["error"]
    with pytest.raises(gr.Error, match="offline"):
        offline.generate("tiny.onnx", "bird", 1, 2, 0, 1.0, ignore_progress)
    assert "**Generation is not available:**" in render.generator_status_markdown(status)


# --- Building and serving -------------------------------------------------------------------


def test_build_app_without_models(tmp_path):
    demo = app.build_app(tmp_path / "empty", examples_dir=tmp_path / "no_examples")
    assert "No models found" in str(demo.config) and str(tmp_path) not in str(demo.config)


def test_build_app_shows_the_examples_and_a_result_at_load(models_dir, generator_dir, tmp_path):
    save_image(tmp_path / "cifar10_test_0000_cat.png", (0, 0, 0), (8, 8))
    save_image(tmp_path / "cifar10_test_0001_bird.png", (0, 0, 0), (8, 8))
    (tmp_path / "notes.txt").write_text("not an example")
    demo = app.build_app(models_dir, examples_dir=tmp_path, generator=generator_dir)
    config = str(demo.config)
    assert "'bird ★'" in config and "'cat'" in config and "notes.txt" not in config  # the example gallery
    assert "bird · tail · 7 training images" in config  # the class picker, filled for the default model
    [upload] = [block for block in demo.blocks.values() if isinstance(block, gr.File) and block.label == "Images"]
    assert [Path(f["path"]).name for f in upload.value] == ["cifar10_test_0001_bird.png"]  # a tail example, at load
    api_names = {fn.api_name for fn in demo.fns.values()}
    assert {"classify", "tau_effect", "model_card", "generator_classes", "generate"} <= api_names
    assert str(app.APP_DIR) not in config


@pytest.fixture(scope="module")
def served(studio, tmp_path_factory):
    from gradio_client import Client

    examples = tmp_path_factory.mktemp("examples")
    save_image(examples / "red.png", size=(40, 30))
    with gradio_launched(app.build_app(studio=studio, examples_dir=examples)) as url:
        yield Client(url, verbose=False)


def test_api_lists_the_endpoints_and_their_parameters(served):
    endpoints = served.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/classify", "/tau_effect", "/model_card", "/long_tail_pictures", "/generator_classes", "/generate"} <= set(
        endpoints)
    assert [p["parameter_name"] for p in endpoints["/classify"]["parameters"]] == ["model_name", "files", "top_k", "tau"]
    assert [p["parameter_name"] for p in endpoints["/generate"]["parameters"]] == [
        "model_name", "class_name", "count", "steps", "seed", "guidance", "keep_recognised"]


def test_classify_over_the_api(served, tmp_path):
    from gradio_client import handle_file

    good = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "broken.jpg"
    bad.write_text("this is text")
    gallery, cards, bars, summary, messages, records = served.predict(
        "tiny.onnx", [handle_file(good), handle_file(bad)], 2, 1.0, api_name="/classify"
    )
    assert len(gallery) == 1 and " training images · " in gallery[0]["caption"]
    assert cards.count('class="lt-card"') == 1 and " training images · " in cards
    assert bars.count('class="lt-row"') == 2
    assert summary.startswith("**") and "with τ = 1" in summary
    assert "broken.jpg is not an image file" in messages
    assert [r["image"] for r in records] == ["photo.png", "broken.jpg"]  # upload order
    assert records[0]["prediction"] in ("cat", "dog", "bird") and records[0]["tau"] == 1.0
    assert sum(c["probability"] for c in records[0]["classes"]) == pytest.approx(1.0)
    assert "error" in records[1]
    assert served.predict("tiny.onnx", [handle_file(good)], 2, api_name="/classify")[-1][0]["tau"] == 0.0  # the default


def test_model_card_over_the_api(served):
    summary, histogram, metrics = served.predict("tiny.onnx", api_name="/model_card")
    assert "**Method:** Cross-entropy" in summary and "more than 100" in summary
    assert histogram.index("cat") < histogram.index("dog") < histogram.index("bird")
    assert "Val-selected (chosen on validation), epoch 180" in metrics and str(METRICS["last_epoch"]["epoch"]) in metrics
    assert "On the test set at <b>τ = 0.5</b>" in served.predict("curved.onnx", 0.5, api_name="/tau_effect")
    assert served.predict("curved.onnx", api_name="/long_tail_pictures").count("<svg") == 3


def test_generate_over_the_api(served):
    cards, download, summary, records = served.predict("tiny.onnx", "dog", 2, 2, 0, 1.0, api_name="/generate")
    assert cards.count('class="lt-card"') == 2 and "recognised as " in cards
    assert zipfile.is_zipfile(download)
    assert records["class_name"] == "dog" and len(records["images"]) == 2 and "recognised as dog" in summary


def test_classification_does_not_wait_for_a_generation(served, monkeypatch, tmp_path):
    """A generation that cannot finish until a classification has been answered: if classification
    queued behind generation, the generation would wait out its timeout and the test would fail."""
    from gradio_client import handle_file

    started, classified = threading.Event(), threading.Event()
    original = Studio.generate

    def held_generate(self, *args, **kwargs):
        started.set()
        assert classified.wait(60), "classification was held up behind the generation"
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Studio, "generate", held_generate)
    job = served.submit("tiny.onnx", "bird", 1, 2, 0, 1.0, api_name="/generate")
    assert started.wait(60)
    image = save_image(tmp_path / "red.png", size=(32, 32))
    records = served.predict("tiny.onnx", [handle_file(image)], 1, api_name="/classify")[-1]
    classified.set()
    assert records[0]["prediction"] in ("cat", "dog", "bird")
    assert job.result(timeout=120)[0].count('class="lt-card"') == 1


def test_only_the_generation_function_asks_for_a_zero_gpu(monkeypatch):
    """On ZeroGPU Spaces the `spaces` package is installed; elsewhere the decorator is a no-op."""
    import importlib
    import sys
    import types

    decorated = []
    fake = types.ModuleType("spaces")
    fake.GPU = lambda function: decorated.append(function.__name__) or function
    monkeypatch.setitem(sys.modules, "spaces", fake)
    try:
        importlib.reload(app)
        assert decorated == ["run_generation"]
    finally:
        monkeypatch.delitem(sys.modules, "spaces")
        importlib.reload(app)
    assert app.on_gpu(len) is len
