"""The Gradio app: rendering, the handlers called directly over a Studio, building, and the API end to end."""

import json
import re
import threading
import zipfile

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import app
from inference.card import group_rule_text
from inference.classifier import ClassScore, OnnxClassifier
from inference.service import ClassChoice, Generation, Limits, ModelCatalog, Recognition, Studio
from studio_app import render
from studio_app.handlers import Handlers
from tests.helpers_onnx import METRICS, make_card, tiny_net_path, write_model
from tests.helpers_servers import gradio_launched


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
    folder = tmp_path_factory.mktemp("zoo")
    write_model(tiny_net_path(tmp_path_factory), folder / "tiny.onnx", make_card())
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


def test_class_bars_show_every_class_in_order_with_group_colours():
    html = render.class_bars_html(scores())
    assert html.index("cat") < html.index("&lt;b&gt;dog&lt;/b&gt;") < html.index("bird")
    assert "<b>dog</b>" not in html  # names are escaped
    assert "70.0%" in html and "10.0%" in html
    assert "500 train" in html and "7 train" in html
    for colour in render.GROUP_COLOURS.values():
        assert colour in html
    assert all(word in html for word in ("head", "medium", "tail"))  # the legend


def test_class_bars_without_training_counts():
    html = render.class_bars_html([ClassScore(0, "x", 1.0, None, None)])
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


def test_metrics_table_has_both_epochs_and_all_groups():
    html = render.metrics_html(make_card())
    assert "Last epoch (epoch 200)" in html
    assert "Val-selected (epoch 180)" in html
    assert "Val-selected, on validation (epoch 180)" in html
    assert "71.5%" in html and "72.0%" in html and "43.5%" in html
    assert "tail classes (by count, primary)" in html
    assert "medium classes (by rank)" in html
    assert html.index("(by count, primary)") < html.index("(by rank)")  # the card's own rule first
    assert "–" in html  # a group without a value
    assert "oracle" not in html


def test_metrics_table_labels_the_test_selected_oracle():
    metrics = dict(METRICS, test_oracle_best={"epoch": 150, "test": {"overall": 74.0}, "note": "selected on test"})
    html = render.metrics_html(make_card(metrics=metrics))
    assert "Test-selected, oracle (epoch 150)" in html and "74.0%" in html and "not a fair estimate" in html


def test_metrics_table_renders_what_is_there():
    only_last = {"last_epoch": {"epoch": 5, "test": {"overall": 50.0}}}
    html = render.metrics_html(make_card(metrics=only_last))
    assert "Last epoch (epoch 5)" in html and "50.0%" in html and "Val-selected" not in html
    assert "No evaluation results" in render.metrics_html(make_card(metrics={}))


def test_card_markdown_and_captions(models_dir):
    classifier = OnnxClassifier(models_dir / "tiny.onnx")
    text = render.card_markdown(classifier.card, classifier)
    for expected in ("**Method:** ce", "**Dataset:** toy-lt", "**Imbalance factor:** 71.4", "`abc1234`", "tinynet"):
        assert expected in text
    [prediction] = classifier.predict([Image.new("RGB", (32, 32))], top_k=3)
    assert re.fullmatch(r"\w+ · (head|medium|tail) class · [\d,]+ training images? · \d\.\d\d", render.caption(prediction))
    assert render.prediction_markdown("x.png", prediction).startswith(f"**{prediction.top[0].name}** · ")


def test_class_choice_labels_and_generation_captions():
    assert render.class_choice_label(ClassChoice("bird", 2, 7, "few")) == "bird · tail · 7 training images"
    assert render.class_choice_label(ClassChoice("x", 0, None, None)) == "x"
    generation = Generation(
        images=[Image.new("RGB", (8, 8))] * 2,
        recognitions=[Recognition("bird", "bird", 0.82, 0.82), Recognition("bird", "dog", 0.6, 0.25)],
        settings={"class_name": "bird", "count": 2, "seed": 3, "first_index": 0, "steps": 2, "guidance": 1.0,
                  "seeds": [1, 2], "model": "tiny.onnx", "generator": {"model_id": "tiny"}},
    )
    assert render.generated_caption(generation, 0) == "recognised as bird · 0.82"
    assert render.generated_caption(generation, 1) == "recognised as dog · 0.60 (bird 0.25)"
    assert "**1 of 2** recognised as bird" in render.generation_summary(generation)


def test_generator_note_shows_a_project_path_relative_to_the_project(tmp_path):
    status = {"available": True, "source": str(tmp_path / "model_zoo" / "gen")}
    assert "Generator: `model_zoo/gen`" in render.generator_status_markdown(status, tmp_path)
    assert str(tmp_path) in render.generator_status_markdown(status, tmp_path / "elsewhere")
    missing = render.generator_status_markdown({"available": False, "error": "no generator configured"})
    assert "**Generation is not available:** no generator configured" in missing


# --- Classify, through the handlers ---------------------------------------------------------


def test_classify_shows_every_image_and_the_details_of_the_one_clicked(handlers, tmp_path):
    paths = [save_image(tmp_path / f"image{i}.png", colour) for i, colour in enumerate([(255, 0, 0), (0, 0, 255)])]
    gallery, label, bars, summary, messages, records, state = handlers.classify("tiny.onnx", paths, 3)
    assert len(gallery) == 2 and "image0.png" in summary and messages == ""
    # Files written whole, not PIL images (which Gradio rewrites in place under a shared path: see OutputFiles).
    assert all(isinstance(item, str) and Image.open(item).size == (40, 40) for item, _ in gallery)
    assert all(re.search(r" · (head|medium|tail) class · ", caption) for _, caption in gallery)
    assert len(label) == 3 and "lt-legend" in bars
    label, bars, summary = handlers.select_image(state, gr.SelectData(None, {"index": 1, "value": None}))
    assert "image1.png" in summary
    assert label == {s["name"]: s["probability"] for s in records[1]["top_k"]}


def test_classify_reports_unreadable_files_in_upload_order(handlers, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_text("this is text")
    good = save_image(tmp_path / "photo.png")
    with pytest.warns(UserWarning, match="broken.jpg is not an image file"):  # gr.Warning outside a request
        gallery, _, _, _, messages, records, state = handlers.classify("tiny.onnx", [str(bad), good], 2)
    assert [r["image"] for r in records] == ["broken.jpg", "photo.png"] and "error" in records[0]
    assert len(gallery) == 1 and "**Could not read 1 of 2 files:**" in messages
    assert [item["image"] for item in state["items"]] == ["photo.png"]


def test_images_are_loaded_by_the_studio_under_its_limits(models_dir, tmp_path):
    """The handlers go through the service, so its limits hold in the app as over HTTP."""
    limited = Handlers(Studio(ModelCatalog(models_dir), limits=Limits(max_pixels=1000, max_batch=2)))
    with pytest.warns(UserWarning, match="above the limit of 0.001 megapixels"):
        records = limited.classify("tiny.onnx", [save_image(tmp_path / "big.png", size=(40, 40))], 1)[5]
    assert "above the limit of 0.001 megapixels" in records[0]["error"]
    with pytest.raises(gr.Error, match="3 images in one request; the limit is 2"):
        limited.classify("tiny.onnx", [save_image(tmp_path / f"{i}.png") for i in range(3)], 1)


def test_classify_without_images_or_model(handlers, tmp_path):
    assert handlers.classify("tiny.onnx", [], 5) == ([], None, "", "", "Upload one or more images to classify them.",
                                                    [], {"items": []})
    with pytest.raises(gr.Error, match="No model selected"):
        handlers.classify(None, [save_image(tmp_path / "x.png")], 5)
    with pytest.raises(gr.Error, match="not found"):
        handlers.classify("missing.onnx", [], 5)  # a bad model is reported before any upload
    assert handlers.select_image({"items": []}, gr.SelectData(None, {"index": 0, "value": None})) == (None, "", "")


def test_model_card(handlers, tmp_path):
    summary, histogram, metrics = handlers.model_card("tiny.onnx")
    assert "### tiny.onnx" in summary and "**Method:** ce" in summary and "more than 100" in summary
    assert histogram.index("cat") < histogram.index("dog") < histogram.index("bird")
    assert "Val-selected (epoch 180)" in metrics
    empty = Handlers(Studio(ModelCatalog(tmp_path / "empty")))
    assert empty.model_card(None)[0].startswith("**No models found.**")


# --- Generate, through the handlers ---------------------------------------------------------


def test_generator_classes_list_tail_classes_first(handlers):
    dropdown = handlers.generator_classes("tiny.onnx")
    assert dropdown.choices == [("bird · tail · 7 training images", "bird"), ("dog · medium · 60 training images", "dog"),
                                ("cat · head · 500 training images", "cat")]
    assert dropdown.value == "bird"


def test_generate_reports_progress_and_gives_files(handlers):
    calls = []
    gallery, download, summary, records = handlers.generate(
        "tiny.onnx", "bird", 3, 2, 5, 1.0, lambda value, **kwargs: calls.append(value))
    assert calls == [(1, 2), (2, 2)]  # the bar follows the denoising steps
    assert len(gallery) == 3 and all(caption.startswith("recognised as ") for _, caption in gallery)
    assert "3 images, seed 5, 2 steps" in summary
    assert [image["seed"] for image in records["images"]] == records["seeds"]
    with zipfile.ZipFile(download) as archive:
        names = archive.namelist()
        assert sorted(names) == ["bird_seed5_000.png", "bird_seed5_001.png", "bird_seed5_002.png", "generation.json"]
        assert Image.open(archive.open(names[0])).size == (16, 16)
        assert json.loads(archive.read("generation.json"))["steps"] == 2

    again = handlers.generate("tiny.onnx", "bird", 1, 2, 5, 1.0, ignore_progress)[0]
    # Image 0 does not depend on the count; the gallery gets files (see studio_app.files), PNG so lossless.
    assert np.array_equal(np.asarray(Image.open(again[0][0])), np.asarray(Image.open(gallery[0][0])))


def test_generate_runs_through_the_runner_it_is_given(studio):
    """app.py hands its spaces.GPU-decorated run_generation to the handlers: generation goes through it."""
    calls = []

    def runner(*args):
        calls.append(args[1:7])
        return app.run_generation(*args)

    Handlers(studio, run_generation=runner).generate("tiny.onnx", "dog", 1, 2, 0, 1.0, ignore_progress)
    assert calls == [("tiny.onnx", "dog", 1, 2, 0, 1.0)]


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
    assert "No models found" in str(demo.config)


def test_build_app_shows_the_examples_and_the_generator(models_dir, generator_dir, tmp_path):
    save_image(tmp_path / "black.png", (0, 0, 0), (8, 8))
    (tmp_path / "notes.txt").write_text("not an example")
    demo = app.build_app(models_dir, examples_dir=tmp_path, generator=generator_dir)
    config = str(demo.config)
    assert "black.png" in config and "notes.txt" not in config  # the examples table
    assert "bird · tail · 7 training images" in config  # the class picker, filled for the default model
    api_names = {fn.api_name for fn in demo.fns.values()}
    assert {"classify", "select_image", "model_card", "generator_classes", "generate"} <= api_names


@pytest.fixture(scope="module")
def served(studio, tmp_path_factory):
    from gradio_client import Client

    examples = tmp_path_factory.mktemp("examples")
    save_image(examples / "red.png", size=(40, 30))
    with gradio_launched(app.build_app(studio=studio, examples_dir=examples)) as url:
        yield Client(url, verbose=False)


def test_api_lists_the_endpoints_and_their_parameters(served):
    endpoints = served.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/classify", "/model_card", "/generator_classes", "/generate"} <= set(endpoints)
    assert [p["parameter_name"] for p in endpoints["/classify"]["parameters"]] == ["model_name", "files", "top_k"]
    assert [p["parameter_name"] for p in endpoints["/generate"]["parameters"]] == [
        "model_name", "class_name", "count", "steps", "seed", "guidance"]


def test_classify_over_the_api(served, tmp_path):
    from gradio_client import handle_file

    good = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "broken.jpg"
    bad.write_text("this is text")
    gallery, label, bars, summary, messages, records = served.predict(
        "tiny.onnx", [handle_file(good), handle_file(bad)], 2, api_name="/classify"
    )
    assert len(gallery) == 1 and " training images · " in gallery[0]["caption"]
    assert len(label["confidences"]) == 2
    assert "cat" in bars and "bird" in bars
    assert summary.startswith("**")
    assert "broken.jpg is not an image file" in messages
    assert [r["image"] for r in records] == ["photo.png", "broken.jpg"]  # upload order
    assert records[0]["prediction"] in ("cat", "dog", "bird")
    assert sum(c["probability"] for c in records[0]["classes"]) == pytest.approx(1.0)
    assert "error" in records[1]


def test_model_card_over_the_api(served):
    summary, histogram, metrics = served.predict("tiny.onnx", api_name="/model_card")
    assert "**Method:** ce" in summary and "more than 100" in summary
    assert histogram.index("cat") < histogram.index("dog") < histogram.index("bird")
    assert "Val-selected (epoch 180)" in metrics and str(METRICS["last_epoch"]["epoch"]) in metrics


def test_generate_over_the_api(served):
    gallery, download, summary, records = served.predict("tiny.onnx", "dog", 2, 2, 0, 1.0, api_name="/generate")
    assert len(gallery) == 2 and gallery[0]["caption"].startswith("recognised as ")
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
    assert len(job.result(timeout=120)[0]) == 1


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
