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


# --- the τ curve and the long-tail report, measured on the exported file -----------------------------------------


def strip_figures(source, target):
    """A copy of an exported file as it was before the figures existed."""
    model = onnx.load(source)
    kept = [(entry.key, entry.value) for entry in model.metadata_props if entry.key not in ("tau_curve", "long_tail")]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, target)
    return target


def test_export_stores_the_figures_of_the_exported_model_on_the_test_set(trained_run, tmp_path, tiny_cifar_npz):
    from inference.classifier import OnnxClassifier
    from inference.long_tail import long_tail_report, tau_curve
    from training.data.lt_data import build_datasets

    output = tmp_path / "model.onnx"
    export_checkpoint(trained_run, output)
    classifier = OnnxClassifier(output)
    card = classifier.card
    assert [entry["tau"] for entry in card.tau_curve] == [i / 4 for i in range(-4, 9)]
    assert set(card.long_tail) == {"class_accuracy", "confusion", "calibration"}

    # The same figures from the served classifier's own logits on the test images (ONNX Runtime, the test split).
    test = build_datasets(load_config(CONFIG, [f"data.root={tiny_cifar_npz}", "data.imbalance_factor=10",
                                               "data.val_per_class=5"]).data).test
    from training.data.transforms import eval_transform

    images = test.with_transform(eval_transform(card.preprocessing))
    tensors = [images[i][0].numpy() for i in range(len(images))]
    logits, labels = classifier.tensor_logits(tensors), np.asarray(test.labels)
    assert card.tau_curve == tau_curve(logits, labels, card.class_counts, card.class_groups)
    assert card.long_tail == long_tail_report(logits, labels, card.class_groups)
    assert sum(map(sum, card.long_tail["confusion"])) == len(test)
    at_zero = card.tau_point(0.0)
    assert at_zero["overall"] == pytest.approx(card.metrics["val_selected"]["test"]["overall"], abs=1.01)


def test_annotate_adds_the_figures_to_an_old_file_and_leaves_the_weights_alone(trained_run, tmp_path, tiny_cifar_npz,
                                                                               capsys):
    from training.__main__ import main as training_main

    exported = tmp_path / "model.onnx"
    export_checkpoint(trained_run, exported)
    old = strip_figures(exported, tmp_path / "old.onnx")
    assert ModelCard.from_metadata_props({e.key: e.value for e in onnx.load(old).metadata_props}).tau_curve is None
    graph_before = onnx.load(old).graph.SerializeToString()

    assert training_main(["annotate", str(old), "--data", str(tiny_cifar_npz), "--set", "data.num_workers=0"]) == 0
    assert "annotated" in capsys.readouterr().out
    annotated, reference = onnx.load(old), onnx.load(exported)
    assert annotated.graph.SerializeToString() == graph_before  # weights and graph byte for byte
    cards = [ModelCard.from_metadata_props({e.key: e.value for e in m.metadata_props}) for m in (annotated, reference)]
    assert cards[0] == cards[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "old.onnx"]  # no temporary left


def test_annotate_says_what_is_missing_in_one_line(trained_run, tmp_path, capsys):
    from training.__main__ import main as training_main

    exported = tmp_path / "model.onnx"
    export_checkpoint(trained_run, exported)
    capsys.readouterr()
    assert training_main(["annotate", str(exported), "--data", str(tmp_path / "missing.npz")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"error: data.root: no such file {tmp_path / 'missing.npz'}"  # --data sets data.root
    assert training_main(["annotate", str(tmp_path / "nothing.onnx")]) == 2
    assert capsys.readouterr().err.strip() == f"error: model file {tmp_path / 'nothing.onnx'} does not exist"
