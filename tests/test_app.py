"""The Gradio app: HTML helpers, building, and the /classify and /model_card API end to end."""

import re
import socket

import numpy as np
import pytest
from PIL import Image

import app
from inference.classifier import ClassScore
from tests.helpers_onnx import METRICS, make_card, tiny_net_path, write_model


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from gradio_client import Client

    folder = tmp_path_factory.mktemp("zoo")
    write_model(tiny_net_path(tmp_path_factory), folder / "tiny.onnx", make_card())
    examples = tmp_path_factory.mktemp("examples")
    Image.new("RGB", (40, 30), (200, 30, 30)).save(examples / "red.png")
    demo = app.build_app(folder, examples_dir=examples)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


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
    label, bars, summary = functions["select_image"](state, gr.SelectData(None, {"index": 1, "value": None}))
    assert "image1.png" in summary
    assert label == {s["name"]: s["probability"] for s in records[1]["top_k"]}
