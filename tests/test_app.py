"""The Gradio app: HTML helpers, building, and the /classify and /model_card API end to end."""

import json
import re
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

import app
from inference.classifier import ClassScore
from tests.helpers_onnx import METRICS, make_card, tiny_net_path, write_model
from tests.helpers_servers import gradio_launched


def scores():
    return [
        ClassScore(0, "cat", 0.7, 500, "many"),
        ClassScore(1, "<b>dog</b>", 0.2, 60, "medium"),
        ClassScore(2, "bird", 0.1, 7, "few"),
    ]


# --- HTML helpers ---------------------------------------------------------------------------


def test_class_bars_show_every_class_in_order_with_group_colours():
    html = app.class_bars_html(scores())
    assert html.index("cat") < html.index("&lt;b&gt;dog&lt;/b&gt;") < html.index("bird")
    assert "<b>dog</b>" not in html  # names are escaped
    assert "70.0%" in html and "10.0%" in html
    assert "500 train" in html and "7 train" in html
    for group, colour in app.GROUP_COLOURS.items():
        assert colour in html
    assert all(word in html for word in ("head", "medium", "tail"))  # the legend


def test_class_bars_without_training_counts():
    html = app.class_bars_html([ClassScore(0, "x", 1.0, None, None)])
    assert "count unknown" in html and app.UNKNOWN_COLOUR in html


def test_histogram_is_sorted_by_count():
    card = make_card(class_names=["rare", "common", "middle"], class_counts=[3, 900, 50], class_groups=["few", "many", "medium"])
    html = app.histogram_html(card)
    assert html.index("common") < html.index("middle") < html.index("rare")
    assert "900" in html and ">3<" in html


def test_group_rule_text():
    text = app.group_rule_text(make_card())
    assert "more than 100" in text and "fewer than 20" in text
    assert "head: 1, medium: 1, tail: 1" in text
    rank = app.group_rule_text(make_card(group_rule={"rule": "rank", "head_fraction": 0.3, "tail_fraction": 0.25}))
    assert "the 30% of classes with the most training images" in rank and "the 25% with the fewest" in rank
    other = app.group_rule_text(make_card(group_rule={"rule": "quantile", "q": 0.5}))
    assert "'quantile'" in other and "q = 0.5" in other
    assert "unknown" in app.group_rule_text(make_card(group_rule={"rule": "unknown"}))


def test_metrics_table_has_both_epochs_and_all_groups():
    html = app.metrics_html(make_card())
    assert "Last epoch (epoch 200)" in html
    assert "Val-selected (epoch 180)" in html
    assert "Val-selected, on validation (epoch 180)" in html
    assert "71.5%" in html and "72.0%" in html and "43.5%" in html
    assert "tail classes (by count, primary)" in html
    assert "medium classes (by rank)" in html
    assert "–" in html  # a group without a value
    assert "oracle" not in html


def test_metrics_table_labels_the_test_selected_oracle():
    metrics = dict(METRICS, test_oracle_best={"epoch": 150, "test": {"overall": 74.0}, "note": "selected on test"})
    html = app.metrics_html(make_card(metrics=metrics))
    assert "Test-selected, oracle (epoch 150)" in html and "74.0%" in html and "not a fair estimate" in html


def test_metrics_table_renders_what_is_there():
    only_last = {"last_epoch": {"epoch": 5, "test": {"overall": 50.0}}}
    html = app.metrics_html(make_card(metrics=only_last))
    assert "Last epoch (epoch 5)" in html and "50.0%" in html and "Val-selected" not in html
    assert "No evaluation results" in app.metrics_html(make_card(metrics={}))


def test_card_markdown_and_captions(tmp_path_factory, tmp_path):
    path = write_model(tiny_net_path(tmp_path_factory), tmp_path / "tiny.onnx", make_card())
    classifier = app.OnnxClassifier(path)
    text = app.card_markdown(classifier.card, classifier)
    for expected in ("**Method:** ce", "**Dataset:** toy-lt", "**Imbalance factor:** 71.4", "`abc1234`", "tinynet"):
        assert expected in text
    [prediction] = classifier.predict([Image.new("RGB", (32, 32))], top_k=3)
    assert re.fullmatch(r"\w+ · (head|medium|tail) class · [\d,]+ training images? · \d\.\d\d", app.caption(prediction))
    assert app.prediction_markdown("x.png", prediction).startswith(f"**{prediction.top[0].name}** · ")


# --- building and serving -------------------------------------------------------------------


def test_build_app_without_models(tmp_path):
    demo = app.build_app(tmp_path / "empty", examples_dir=tmp_path / "no_examples")
    assert "No models found" in str(demo.config)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from gradio_client import Client

    folder = tmp_path_factory.mktemp("zoo")
    write_model(tiny_net_path(tmp_path_factory), folder / "tiny.onnx", make_card())
    examples = tmp_path_factory.mktemp("examples")
    Image.new("RGB", (40, 30), (200, 30, 30)).save(examples / "red.png")
    with gradio_launched(app.build_app(folder, examples_dir=examples)) as url:
        yield Client(url, verbose=False)


def test_api_lists_classify_and_model_card(served):
    endpoints = served.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/classify", "/model_card"} <= set(endpoints)
    assert [p["parameter_name"] for p in endpoints["/classify"]["parameters"]] == ["model_name", "files", "top_k"]


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


def test_selecting_a_gallery_image_shows_its_details(tmp_path_factory, tmp_path):
    import gradio as gr

    folder = tmp_path / "zoo"
    folder.mkdir()
    write_model(tiny_net_path(tmp_path_factory), folder / "tiny.onnx", make_card())
    examples = tmp_path / "examples"
    examples.mkdir()
    Image.new("RGB", (8, 8)).save(examples / "black.png")
    demo = app.build_app(folder, examples_dir=examples)
    assert "black.png" in str(demo.config)  # the examples table
    functions = {fn.api_name: fn.fn for fn in demo.fns.values()}

    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        paths.append(tmp_path / f"image{i}.png")
        Image.new("RGB", (40, 40), colour).save(paths[-1])
    gallery, label, bars, summary, messages, records, state = functions["classify"]("tiny.onnx", [str(p) for p in paths], 3)
    assert len(gallery) == 2 and "image0.png" in summary and messages == ""
    # Files written whole, not PIL images (which Gradio rewrites in place under a shared path: see OutputFiles).
    assert all(isinstance(item, str) and Image.open(item).size == (40, 40) for item, _ in gallery)
    label, bars, summary = functions["select_image"](state, gr.SelectData(None, {"index": 1, "value": None}))
    assert "image1.png" in summary
    assert label == {s["name"]: s["probability"] for s in records[1]["top_k"]}


# --- the Generate view ----------------------------------------------------------------------


def test_class_choice_labels_and_generation_captions():
    from inference.service import ClassChoice, Generation, Recognition

    assert app.class_choice_label(ClassChoice("bird", 2, 7, "few")) == "bird · tail · 7 training images"
    assert app.class_choice_label(ClassChoice("x", 0, None, None)) == "x"
    generation = Generation(
        images=[Image.new("RGB", (8, 8))] * 2,
        recognitions=[Recognition("bird", "bird", 0.82, 0.82), Recognition("bird", "dog", 0.6, 0.25)],
        settings={"class_name": "bird", "count": 2, "seed": 3, "first_index": 0, "steps": 2, "guidance": 1.0,
                  "seeds": [1, 2], "model": "tiny.onnx", "generator": {"model_id": "tiny"}},
    )
    assert app.generated_caption(generation, 0) == "recognised as bird · 0.82"
    assert app.generated_caption(generation, 1) == "recognised as dog · 0.60 (bird 0.25)"
    assert "**1 of 2** recognised as bird" in app.generation_summary(generation)


@pytest.fixture(scope="module")
def generator_app(tmp_path_factory):
    """A built app with the tiny model and a tiny random class-conditional generator for its classes."""
    from conftest import write_tiny_generator

    folder = tmp_path_factory.mktemp("zoo_gen")
    write_model(tiny_net_path(tmp_path_factory), folder / "tiny.onnx", make_card())
    generator = write_tiny_generator(tmp_path_factory.mktemp("generator") / "tiny", ["cat", "dog", "bird"])
    return app.build_app(folder, examples_dir=tmp_path_factory.mktemp("no_examples"), generator=generator)


def test_generate_view_lists_tail_classes_first_and_reports_progress(generator_app):
    functions = {fn.api_name: fn.fn for fn in generator_app.fns.values()}
    dropdown = functions["generator_classes"]("tiny.onnx")
    assert dropdown.choices == [("bird · tail · 7 training images", "bird"), ("dog · medium · 60 training images", "dog"),
                                ("cat · head · 500 training images", "cat")]
    assert dropdown.value == "bird"

    calls = []
    gallery, download, _, records = functions["generate"](
        "tiny.onnx", "bird", 3, 2, 5, 1.0, lambda value, **kwargs: calls.append(value))
    assert calls == [(1, 2), (2, 2)]  # the bar follows the denoising steps
    assert len(gallery) == 3 and all(caption.startswith("recognised as ") for _, caption in gallery)
    assert [image["seed"] for image in records["images"]] == records["seeds"]
    with zipfile.ZipFile(download) as archive:
        names = archive.namelist()
        assert sorted(names) == ["bird_seed5_000.png", "bird_seed5_001.png", "bird_seed5_002.png", "generation.json"]
        assert Image.open(archive.open(names[0])).size == (16, 16)
        assert json.loads(archive.read("generation.json"))["steps"] == 2

    again = functions["generate"]("tiny.onnx", "bird", 1, 2, 5, 1.0, lambda value, **kwargs: None)[0]
    # Image 0 does not depend on the count; the gallery gets files (see app.OutputFiles), PNG so lossless.
    assert np.array_equal(np.asarray(Image.open(again[0][0])), np.asarray(Image.open(gallery[0][0])))


def test_generate_errors_are_messages(generator_app, tmp_path_factory):
    import gradio as gr

    functions = {fn.api_name: fn.fn for fn in generator_app.fns.values()}
    with pytest.raises(gr.Error, match="has no class 'zebra'"):
        functions["generate"]("tiny.onnx", "zebra", 1, 2, 0, 1.0, lambda *a, **k: None)
    with pytest.raises(gr.Error, match="count must be between 1 and 16"):
        functions["generate"]("tiny.onnx", "bird", 17, 2, 0, 1.0, lambda *a, **k: None)

    # A text-to-image model that is not in the local cache, with HF_HUB_OFFLINE set (conftest).
    folder = tmp_path_factory.mktemp("zoo_t2i")
    write_model(tiny_net_path(tmp_path_factory), folder / "tiny.onnx", make_card())
    offline = app.build_app(folder, examples_dir=folder, generator="no-such-user/no-such-model")
    functions = {fn.api_name: fn.fn for fn in offline.fns.values()}
    assert functions["generator_classes"]("tiny.onnx").choices[0][1] == "bird"  # the model's classes
    with pytest.raises(gr.Error, match="offline"):
        functions["generate"]("tiny.onnx", "bird", 1, 2, 0, 1.0, lambda *a, **k: None)


@pytest.fixture(scope="module")
def served_generator(generator_app):
    from gradio_client import Client

    with gradio_launched(generator_app) as url:
        yield Client(url, verbose=False)


def test_generate_over_the_api(served_generator):
    endpoints = served_generator.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/classify", "/model_card", "/generator_classes", "/generate"} <= set(endpoints)
    assert [p["parameter_name"] for p in endpoints["/generate"]["parameters"]] == [
        "model_name", "class_name", "count", "steps", "seed", "guidance"]

    gallery, download, summary, records = served_generator.predict(
        "tiny.onnx", "dog", 2, 2, 0, 1.0, api_name="/generate")
    assert len(gallery) == 2 and gallery[0]["caption"].startswith("recognised as ")
    assert zipfile.is_zipfile(download)
    assert records["class_name"] == "dog" and len(records["images"]) == 2 and "recognised as dog" in summary


def test_classification_does_not_wait_for_a_generation(generator_app, served_generator, monkeypatch, tmp_path):
    """A generation that cannot finish until a classification has been answered: if classification
    queued behind generation, the generation would wait out its timeout and the test would fail."""
    from gradio_client import handle_file

    from inference.service import Studio

    started, classified = threading.Event(), threading.Event()
    original = Studio.generate

    def held_generate(self, *args, **kwargs):
        started.set()
        assert classified.wait(60), "classification was held up behind the generation"
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Studio, "generate", held_generate)
    job = served_generator.submit("tiny.onnx", "bird", 1, 2, 0, 1.0, api_name="/generate")
    assert started.wait(60)
    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    records = served_generator.predict("tiny.onnx", [handle_file(image)], 1, api_name="/classify")[-1]
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
