"""The Hub card `python -m training push` writes: huggingface_hub's metadata with a model-index, offline.

Every test stages a repo with `--dry-run DIR` and reads its README.md back with huggingface_hub's own
`ModelCard.load`, so the model-index is checked as the Hub's client parses it.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_generator
from helpers_onnx import METRICS, make_card, tiny_net_path, write_model
from huggingface_hub import ModelCard as HubModelCard
from PIL import Image

from inference.generator_folder import GENERATOR_FILES
from training.__main__ import main
from training.synthesize import recognition_report

GENERATOR_CLASSES = ["red", "green", "blue"]
ORACLE = {"epoch": 150, "test": {"overall": 99.0, "groups": {"count": {"many": 99.0, "medium": 99.0, "few": 99.0}}}}


@pytest.fixture(scope="module")
def generator_folder(tmp_path_factory) -> Path:
    return write_tiny_generator(tmp_path_factory.mktemp("generator") / "generator", GENERATOR_CLASSES)


def staged_card(tmp_path, checkpoint: Path, *extra: str) -> HubModelCard:
    out = tmp_path / "staged"
    assert main(["push", "--checkpoint", str(checkpoint), "--repo-id", "alice/x", "--dry-run", str(out), *extra]) == 0
    return HubModelCard.load(out / "README.md")


def by_checkpoint_and_group(card: HubModelCard) -> dict:
    """The model-index's values keyed by (checkpoint, group), group None for overall accuracy."""
    values = {}
    for result in card.data.eval_results:
        key = (result.metric_args["checkpoint"], result.metric_args.get("group"))
        assert key not in values, f"{key} appears twice"
        values[key] = result.metric_value
    return values


# ----------------------------------------------------------------------------------------------- classifier


def test_model_index_holds_overall_and_group_accuracy_of_both_checkpoints(tmp_path_factory, tmp_path):
    card = make_card(checkpoint={"which": "val-selected", "epoch": 180},
                     metrics={**METRICS, "test_oracle_best": ORACLE})
    model = write_model(tiny_net_path(tmp_path_factory), tmp_path / "tiny.onnx", card)
    readme = staged_card(tmp_path, model)

    expected = {}
    for key, which in (("last_epoch", "last"), ("val_selected", "val-selected")):
        test = METRICS[key]["test"]
        expected[(which, None)] = test["overall"]
        for stored, shown in (("many", "head"), ("medium", "medium"), ("few", "tail")):
            expected[(which, shown)] = test["groups"]["count"][stored]  # the card's rule, not "rank"
    assert by_checkpoint_and_group(readme) == expected  # the oracle (99.0) is not there

    results = readme.data.eval_results
    assert {(r.task_type, r.dataset_type, r.dataset_split, r.metric_type) for r in results} == {
        ("image-classification", "toy-lt", "test", "accuracy")}  # toy-lt has no Hub id: our name
    assert readme.data.model_name == "tiny"
    tail = next(r for r in results if r.metric_args == {"checkpoint": "last", "epoch": 200, "group": "tail"})
    assert tail.metric_name.startswith("Tail-class accuracy (%), last epoch checkpoint (epoch 200)")
    assert "more than 100" in tail.metric_config and "fewer than 20" in tail.metric_config  # the group rule
    these_weights = [r.metric_args["checkpoint"] for r in results if "the weights in this repo" in r.metric_name]
    assert set(these_weights) == {"val-selected"} and len(these_weights) == 4
    assert "test-selected, oracle" in readme.text and "not a fair estimate" in readme.text  # labelled, in the body only


def test_metadata_comes_from_the_card(tmp_path_factory, tmp_path):
    card = make_card(dataset="cifar10_lt", method="logit_adjusted", imbalance_factor=100.0)
    model = write_model(tiny_net_path(tmp_path_factory), tmp_path / "c10.onnx", card)
    data = staged_card(tmp_path, model).data
    assert (data.license, data.library_name, data.pipeline_tag) == ("apache-2.0", "onnx", "image-classification")
    assert data.tags == ["long-tail", "longtail-studio", "onnx", "logit_adjusted"]
    assert data.datasets == ["uoft-cs/cifar10"] and data.metrics == ["accuracy"]
    [dataset_name] = {r.dataset_name for r in data.eval_results}
    assert {r.dataset_type for r in data.eval_results} == {"uoft-cs/cifar10"}
    assert dataset_name == "cifar10_lt (imbalance factor 100 in training)"


def test_a_card_without_metrics_gets_no_model_index(tmp_path_factory, tmp_path):
    model = write_model(tiny_net_path(tmp_path_factory), tmp_path / "tiny.onnx", make_card(metrics={}))
    readme = staged_card(tmp_path, model)
    assert readme.data.eval_results is None and "model-index" not in readme.data.to_dict()
    assert readme.data.metrics is None and "model_name" not in readme.data.to_dict()


def test_groups_without_a_value_are_left_out_and_values_have_two_decimals(tmp_path_factory, tmp_path):
    groups = {"count": {"many": 80.00000000000001, "few": None}}  # float noise, as a mean of per-class accuracies has
    metrics = {"val_selected": {"epoch": 3, "test": {"overall": 50.0, "groups": groups}}}
    model = write_model(tiny_net_path(tmp_path_factory), tmp_path / "tiny.onnx", make_card(metrics=metrics))
    assert by_checkpoint_and_group(staged_card(tmp_path, model)) == {("val-selected", None): 50.0,
                                                                     ("val-selected", "head"): 80.0}


# ------------------------------------------------------------------------------------------------ generator


def write_recognition_report(tmp_path_factory, tmp_path) -> tuple[Path, dict]:
    """A report made by the code `check-synthetic --output` runs: a tiny classifier of the generator's classes
    judging a few solid-colour images."""
    judge = write_model(tiny_net_path(tmp_path_factory), tmp_path / "judge.onnx",
                        make_card(class_names=list(GENERATOR_CLASSES)))
    paths, labels = [], []
    for class_index, colour in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200)]):
        for shade in range(class_index + 2):  # 2, 3 and 4 images: the classes differ in size
            path = tmp_path / f"{class_index}_{shade}.png"
            Image.new("RGB", (32, 32), tuple(max(0, c - 30 * shade) for c in colour)).save(path)
            paths.append(path)
            labels.append(class_index)
    report = recognition_report(paths, np.array(labels), GENERATOR_CLASSES, str(judge))
    path = tmp_path / "recognition.json"
    path.write_text(json.dumps(report, indent=1))
    return path, report


def test_generator_card_carries_the_recognition_report(generator_folder, tmp_path_factory, tmp_path):
    report_file, report = write_recognition_report(tmp_path_factory, tmp_path)
    readme = staged_card(tmp_path, generator_folder, "--recognition-report", str(report_file))

    results = readme.data.eval_results
    values = {r.metric_args.get("class"): r.metric_value for r in results}
    assert values == {None: report["recognised"], **{name: row["recognised"] for name, row in report["per_class"].items()}}
    assert {(r.task_type, r.metric_type, r.dataset_type) for r in results} == {
        ("unconditional-image-generation", "accuracy", "toy-lt")}
    assert {r.metric_args["judge"] for r in results} == {"judge.onnx"}
    assert [r.metric_args["images"] for r in results] == [9, 2, 3, 4]
    assert readme.data.pipeline_tag == "unconditional-image-generation" and readme.data.license == "apache-2.0"
    assert readme.data.model_name == "tiny_generator" and readme.data.library_name is None  # no model_index.json
    assert "Random weights, for tests." in readme.text and "| blue | 4 |" in readme.text
    assert "Not measured" not in readme.text


def test_a_pushed_generator_card_is_rewritten_not_stacked(generator_folder, tmp_path_factory, tmp_path):
    """Re-pushing a downloaded repo: its metadata is the old card's; ours replaces what we derive."""
    folder = tmp_path / "downloaded"
    report_file, _ = write_recognition_report(tmp_path_factory, tmp_path)
    assert main(["push", "--checkpoint", str(generator_folder), "--repo-id", "alice/gen", "--dry-run", str(folder),
                 "--recognition-report", str(report_file)]) == 0
    card = HubModelCard.load(folder / "README.md")
    card.data.base_model = "someone/base"
    card.data.tags = ["mine", "long-tail"]
    card.save(folder / "README.md")

    readme = staged_card(tmp_path, folder)  # no report this time
    assert readme.data.base_model == "someone/base"
    assert readme.data.tags == ["long-tail", "longtail-studio", "diffusion", "class-conditional", "mine"]
    assert readme.data.eval_results is None  # the old scores are gone with the report
    assert readme.text.count("## Recognition") == 1 and "Not measured" in readme.text


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("not json", "cannot be read as JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"model": "m.onnx", "images": 3}', "is not a check-synthetic report"),
    ('{"model": "m.onnx", "images": 0, "recognised": null, "per_class": {}}', "scores no images"),
    (json.dumps({"model": "m.onnx", "images": 2, "recognised": 50.0,
                 "per_class": {"cat": {"images": 2, "recognised": 50.0, "mean_confidence": 0.5}}}),
     "does not make: ['cat']"),
])
def test_a_bad_recognition_report_is_one_clear_line(generator_folder, tmp_path, capsys, content, message):
    report = tmp_path / "report.json"
    if content is not None:
        report.write_text(content)
    argv = ["push", "--checkpoint", str(generator_folder), "--repo-id", "alice/gen",
            "--dry-run", str(tmp_path / "out"), "--recognition-report", str(report)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and message in error.split("report.json", 1)[1]


def test_a_recognition_report_for_a_classifier_is_refused(tmp_path_factory, tmp_path, capsys):
    model = write_model(tiny_net_path(tmp_path_factory), tmp_path / "tiny.onnx", make_card())
    argv = ["push", "--checkpoint", str(model), "--repo-id", "alice/x", "--dry-run", str(tmp_path / "out"),
            "--recognition-report", str(tmp_path / "r.json")]
    assert main(argv) == 2
    assert "scores a generator's samples" in capsys.readouterr().err


def test_a_generator_is_staged_with_every_file_the_folder_contract_lists(generator_folder, tmp_path, monkeypatch):
    import training.push

    folder = tmp_path / "generator"
    shutil.copytree(generator_folder, folder)
    (folder / "notes").mkdir()
    (folder / "notes" / "a.txt").write_text("a")
    (folder / "extra.txt").write_text("b")
    (folder / "not_listed.txt").write_text("c")
    monkeypatch.setattr(training.push, "GENERATOR_FILES", (*GENERATOR_FILES, "notes", "extra.txt", "absent.json"))
    out = tmp_path / "staged"
    assert main(["push", "--checkpoint", str(folder), "--repo-id", "alice/gen", "--dry-run", str(out)]) == 0
    staged = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert {"notes/a.txt", "extra.txt", "generator.json", "README.md"} <= staged and "not_listed.txt" not in staged
    assert (out / "generator.json").read_bytes() == (folder / "generator.json").read_bytes()  # as it was tested

