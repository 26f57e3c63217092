"""`python -m training export --quantize int8` on a tiny trained run: the int8 file and its card record, the per-group
gate that refuses and writes nothing, quantizing an exported .onnx file, and every surface showing the model is int8."""

import json
from dataclasses import asdict

import numpy as np
import onnx
import pytest
from conftest import make_images
from fastapi.testclient import TestClient
from PIL import Image

import training.train as trainer
from inference.card import ModelCard, markdown_document
from inference.classifier import OnnxClassifier
from inference.server import create_app
from inference.service import ModelCatalog, Studio
from studio_app import render
from training.__main__ import main as training_main
from training.config import load_config
from training.export import export_checkpoint
from training.quantize import INT8_FORMAT, QuantizationRefused, quantize_export

CONFIG = "configs/cifar10_lt/ce.yaml"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_cifar_npz):
    run = tmp_path_factory.mktemp("quantize") / "run"
    overrides = [f"data.root={tiny_cifar_npz}", "data.imbalance_factor=10", "data.val_per_class=5",
                 "data.batch_size=32", "data.num_workers=0", "optim.epochs=1", "optim.lr=0.02",
                 "run.progress=false"]
    trainer.train(load_config(CONFIG, overrides), run)
    return run


@pytest.fixture(scope="module")
def models(trained_run, tmp_path_factory):
    """A folder with the run exported to fp32 and quantized to int8 (gate wide open: the run is barely trained)."""
    folder = tmp_path_factory.mktemp("models")
    export_checkpoint(trained_run, folder / "tiny.onnx")
    report = quantize_export(trained_run, folder / "tiny_int8.onnx", max_group_drop=100.0)
    return folder, report


def card_of(path) -> ModelCard:
    return ModelCard.from_metadata_props({entry.key: entry.value for entry in onnx.load(path).metadata_props})


def test_int8_file_has_integer_ops_and_the_quantization_record(models, trained_run):
    folder, report = models
    assert sorted(p.name for p in folder.iterdir()) == ["tiny.onnx", "tiny_int8.onnx"]  # no temporary left
    graph = onnx.load(folder / "tiny_int8.onnx").graph
    weights = {tensor.name: tensor.data_type for tensor in graph.initializer}
    conv_weights = [node.input[0] for node in graph.node if node.op_type == "DequantizeLinear" and
                    weights.get(node.input[0]) == onnx.TensorProto.INT8]  # QDQ: int8 weights, dequantized for Conv
    assert len(conv_weights) >= sum(node.op_type == "Conv" for node in graph.node) > 0
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}

    fp32_card, card = card_of(folder / "tiny.onnx"), card_of(folder / "tiny_int8.onnx")
    assert fp32_card.quantization == {}
    # The rest of the card is kept; the τ curve and long-tail report are the int8 model's own.
    assert asdict(card) == {**asdict(fp32_card), "quantization": card.quantization, "tau_curve": card.tau_curve,
                            "long_tail": card.long_tail}
    for model_card, accuracy in ((fp32_card, "fp32_accuracy"), (card, "int8_accuracy")):
        at_zero = model_card.tau_point(0.0)
        assert round(at_zero["overall"], 2) == card.quantization[accuracy]["overall"]
        assert round(at_zero["groups"]["tail"], 2) == card.quantization[accuracy]["few"]
    assert sum(map(sum, card.long_tail["confusion"])) == card.quantization["test_images"]
    record = card.quantization
    assert record["format"] == asdict(INT8_FORMAT) and record["max_group_drop"] == 100.0
    assert record["calibration_images"] == sum(min(32, n) for n in card.class_counts)  # 32 per class, or all it has
    assert record["test_images"] == 100 and record["group_rule"] == card.group_rule["rule"] == "rank"
    assert set(record["fp32_accuracy"]) == set(record["int8_accuracy"]) == {"overall", "many", "medium", "few"}
    # ONNX Runtime's fp32 accuracy is the one training measured in PyTorch: the export is exact.
    torch_test = json.loads((trained_run / "best.json").read_text())["metrics"]["val_selected"]["test"]
    assert record["fp32_accuracy"]["overall"] == pytest.approx(torch_test["overall"], abs=0.01)
    assert report.drops == pytest.approx({g: record["fp32_accuracy"][g] - record["int8_accuracy"][g]
                                          for g in ("many", "medium", "few")}, abs=0.01)


def test_the_gate_refuses_and_writes_nothing(trained_run, tmp_path):
    with pytest.raises(QuantizationRefused, match=r"(head|medium|tail) lost -?\d+\.\d\d points .*nothing was written"):
        quantize_export(trained_run, tmp_path / "int8.onnx", max_group_drop=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_cli_quantizes_an_exported_file_and_refuses_with_exit_2(models, tiny_cifar_npz, tmp_path, capsys):
    folder, _ = models
    fp32, int8 = folder / "tiny.onnx", tmp_path / "from_file_int8.onnx"
    data = f"data.root={tiny_cifar_npz}"
    base = ["export", "--checkpoint", str(fp32), "--quantize", "int8", "--set", data, "--output"]
    assert training_main([*base, str(int8), "--max-group-drop", "100"]) == 0
    out = capsys.readouterr().out
    assert "fp32" in out and "tail" in out and f"wrote {int8}" in out
    assert card_of(int8).quantization["calibration_images"] == card_of(folder / "tiny_int8.onnx").quantization[
        "calibration_images"]

    refused = tmp_path / "refused.onnx"
    assert training_main([*base, str(refused), "--max-group-drop", "-5"]) == 2
    assert "lost" in capsys.readouterr().err and not refused.exists()
    assert training_main(["export", "--checkpoint", str(int8), "--quantize", "int8", "--output", str(refused)]) == 2
    assert "already quantized" in capsys.readouterr().err
    assert training_main(["export", "--checkpoint", str(fp32), "--output", str(refused)]) == 2
    assert "--quantize int8" in capsys.readouterr().err and not refused.exists()


def test_classifier_runs_it_and_every_surface_says_int8(models):
    folder, _ = models
    int8, fp32 = OnnxClassifier(folder / "tiny_int8.onnx"), OnnxClassifier(folder / "tiny.onnx")
    images = [Image.fromarray(image) for image in make_images(np.arange(10), seed=7)]
    probabilities = int8.probabilities(images)
    assert probabilities.shape == (10, 10) and np.allclose(probabilities.sum(axis=1), 1)
    assert np.mean(probabilities.argmax(1) == fp32.probabilities(images).argmax(1)) >= 0.8

    assert "- **Quantization:** int8 (QDQ, uint8 activations, int8 weights)" in markdown_document(int8.card, "t")
    assert "Quantization" not in markdown_document(fp32.card, "t")
    assert "**Precision:** int8 (QDQ" in render.card_markdown(int8.card, int8)
    assert "**Precision:** float32" in render.card_markdown(fp32.card, fp32)

    listing = TestClient(create_app(Studio(ModelCatalog(folder)))).get("/v1/models").json()["models"]
    by_name = {model["name"]: model for model in listing}
    assert by_name["tiny_int8.onnx"]["quantization"]["format"]["quant_format"] == "QDQ"
    assert by_name["tiny.onnx"]["quantization"] is None


def test_predict_cli_notes_int8_on_stderr_and_keeps_json_on_stdout(models, tmp_path, capsys):
    from inference.__main__ import main as inference_main

    folder, _ = models
    image = tmp_path / "red.png"
    Image.fromarray(make_images(np.array([0]))[0]).save(image)
    assert inference_main(["predict", "--model", str(folder / "tiny_int8.onnx"), str(image)]) == 0
    captured = capsys.readouterr()
    assert "tiny_int8.onnx: int8 (QDQ" in captured.err
    assert json.loads(captured.out)[0]["image"] == str(image)


def test_old_cards_without_the_field_still_load(models):
    folder, _ = models
    props = {entry.key: entry.value for entry in onnx.load(folder / "tiny.onnx").metadata_props}
    del props["quantization"]
    assert ModelCard.from_metadata_props(props).quantization == {}
