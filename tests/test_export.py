import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import training.train as trainer
from inference.card import FORMAT_KEY, ModelCard
from training.config import load_config
from training.export import ExportError, export_checkpoint, export_onnx
from training.trained import load_trained

CONFIG = "configs/cifar10_lt/ce.yaml"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_cifar_npz):
    run = tmp_path_factory.mktemp("export") / "run"
    overrides = [f"data.root={tiny_cifar_npz}", "data.imbalance_factor=10", "data.val_per_class=5",
                 "data.batch_size=32", "data.num_workers=0", "optim.epochs=1", "optim.lr=0.02",
                 "run.progress=false"]
    trainer.train(load_config(CONFIG, overrides), run)
    return run


def test_export_writes_one_checked_file_with_the_model_card(trained_run, tmp_path):
    output = tmp_path / "model.onnx"
    differences = export_checkpoint(trained_run, output)
    assert set(differences) == {"random batch 1", "random batch 5", "real images"}
    assert max(differences.values()) <= 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no external .onnx.data file

    model = onnx.load(output)
    onnx.checker.check_model(model, full_check=True)
    props = {entry.key: entry.value for entry in model.metadata_props}
    assert props[FORMAT_KEY] == "1"
    card = ModelCard.from_metadata_props(props)
    info = json.loads((trained_run / "best.json").read_text())
    assert card.class_names == info["class_names"] and card.class_counts == info["class_counts"]
    assert card.class_groups == info["class_groups"] and card.group_rule["rule"] == "rank"
    assert card.preprocessing.input_size == [3, 32, 32]
    assert card.method == "ce" and card.dataset == "cifar10_lt" and card.imbalance_factor == 10
    assert {"last_epoch", "val_selected"} <= set(card.metrics)
    assert card.config["optim"]["epochs"] == 1 and card.git_revision
    assert card.checkpoint == {"which": "val-selected", "epoch": info["epoch"]}


def test_exported_graph_has_a_dynamic_batch_and_matches_torch(trained_run, tmp_path):
    output = tmp_path / "model.onnx"
    export_checkpoint(trained_run, output, which="last")
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "images" and session.get_outputs()[0].name == "logits"
    _, method, model, _ = load_trained(trained_run, "last")
    for batch in (1, 7, 64):
        images = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = model(images).numpy()
        actual = session.run(None, {"images": images.numpy()})[0]
        assert actual.shape == (batch, 10)
        assert np.max(np.abs(actual - expected)) <= 1e-4


def test_parity_failure_is_loud_and_writes_nothing(trained_run, tmp_path):
    _, method, model, info = trained = load_trained(trained_run)
    card = trained.card
    with pytest.raises(ExportError, match="disagree"):
        export_onnx(method.classifier(model), card.preprocessing, card, tmp_path / "m.onnx", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []
