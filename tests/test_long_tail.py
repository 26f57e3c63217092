"""Post-hoc logit adjustment and the long-tail report (inference/long_tail.py): the τ arithmetic, the curve and the
report on examples small enough to check by hand, reading the curve at any τ, and the card that stores them (ONNX
metadata, the checkpoint's JSON, the Markdown document)."""

import numpy as np
import onnx
import pytest

from inference.card import ModelCard, markdown_document
from inference.long_tail import (
    CALIBRATION_BINS,
    TAU_GRID,
    PriorUnavailableError,
    adjust_logits,
    log_prior,
    long_tail_report,
    reliability,
    softmax,
    tau_curve,
)
from tests.helpers_onnx import make_card, tiny_net_path, write_model

# --- τ ----------------------------------------------------------------------------------------------------


def test_tau_zero_is_the_model_as_trained_and_tau_one_subtracts_the_log_prior():
    logits = np.array([[2.0, 1.0, 0.5], [-1.0, 3.0, 0.0]], dtype=np.float32)
    counts = [500, 60, 7]
    prior = np.array(counts) / sum(counts)
    assert np.array_equal(adjust_logits(logits, log_prior(counts), 0.0), logits.astype(np.float64))
    assert np.array_equal(adjust_logits(logits, None, 0.0), logits.astype(np.float64))  # no prior needed at 0
    np.testing.assert_allclose(adjust_logits(logits, log_prior(counts), 1.0), logits - np.log(prior), rtol=0, atol=1e-12)
    np.testing.assert_allclose(adjust_logits(logits, log_prior(counts), -0.5), logits + 0.5 * np.log(prior), atol=1e-12)


def test_a_borderline_image_flips_to_the_tail_class_as_tau_grows_and_back_below_zero():
    counts = [500, 60, 7]  # log(500 / 7) = 4.27: τ = 1 lifts the tail class that much over the head class
    logits = np.array([[3.0, 0.0, 1.0]])  # the head class ahead by 2
    prediction = {tau: int(adjust_logits(logits, log_prior(counts), tau).argmax()) for tau in (-1.0, 0.0, 0.25, 1.0)}
    assert prediction == {-1.0: 0, 0.0: 0, 0.25: 0, 1.0: 2}
    near_tie = np.array([[1.0, 0.0, 1.01]])  # the tail class barely ahead: a negative τ gives it back to the head
    assert int(adjust_logits(near_tie, log_prior(counts), -0.25).argmax()) == 0


def test_tau_needs_every_training_count():
    with pytest.raises(PriorUnavailableError, match="training( class)? count"):
        log_prior([0, 0, 0])
    with pytest.raises(PriorUnavailableError, match="training( class)? count"):
        adjust_logits(np.zeros((1, 3)), None, 0.5)


# --- the curve and the report, checked by hand -------------------------------------------------------------

# Two classes, the first a head class, the second a tail class. Logits log p, log(1 − p) give softmax p, 1 − p.
P = [0.9, 0.9, 0.62, 0.3]  # probability of class 0 per image: confidences 0.9, 0.9, 0.62, 0.7
LABELS = np.array([0, 1, 0, 1])  # so image 1 (confidence 0.9) is wrong, the others right
GROUPS = ["many", "few"]
COUNTS = [90, 10]


def two_class_logits() -> np.ndarray:
    return np.log(np.array([[p, 1 - p] for p in P]))


def test_ece_and_reliability_bins_by_hand():
    everything = reliability(softmax(two_class_logits()), LABELS)
    # bins of 1/15: 0.9 → bin 13 (2 images, 1 right), 0.62 → bin 9, 0.7 → bin 10 (1 image each, right)
    # ECE = 2/4·|0.5 − 0.9| + 1/4·|1 − 0.62| + 1/4·|1 − 0.7| = 0.37
    assert everything["ece"] == pytest.approx(37.0)
    assert len(everything["bins"]) == CALIBRATION_BINS
    counts = {b: entry["count"] for b, entry in enumerate(everything["bins"]) if entry["count"]}
    assert counts == {9: 1, 10: 1, 13: 2}
    assert everything["bins"][13]["confidence"] == pytest.approx(90.0)
    assert everything["bins"][13]["accuracy"] == pytest.approx(50.0)
    empty = everything["bins"][0]
    assert empty == {"confidence": pytest.approx(100 / 30, abs=1e-4), "accuracy": 0.0, "count": 0}  # kept, at its centre


def test_the_report_has_class_accuracy_confusion_and_calibration_per_group():
    report = long_tail_report(two_class_logits(), LABELS, GROUPS)
    assert report["class_accuracy"] == [100.0, 50.0]
    assert report["confusion"] == [[2, 0], [1, 1]]  # rows: true class; the tail image went to the head class
    calibration = report["calibration"]
    assert set(calibration) == {"head", "medium", "tail"}
    assert calibration["head"]["ece"] == pytest.approx(24.0)  # 1/2·|1 − 0.9| + 1/2·|1 − 0.62|
    assert calibration["tail"]["ece"] == pytest.approx(60.0)  # 1/2·|0 − 0.9| + 1/2·|1 − 0.7|
    assert calibration["medium"]["ece"] is None and sum(b["count"] for b in calibration["medium"]["bins"]) == 0


def test_the_curve_has_one_entry_per_tau_of_the_grid():
    assert TAU_GRID == tuple(np.arange(-4, 9) / 4)  # −1 … 2 in steps of 0.25
    curve = tau_curve(two_class_logits(), LABELS, COUNTS, GROUPS)
    assert [entry["tau"] for entry in curve] == list(TAU_GRID)
    at_zero = curve[TAU_GRID.index(0.0)]
    assert at_zero == {"tau": 0.0, "overall": 75.0, "groups": {"head": 100.0, "medium": None, "tail": 50.0},
                       "ece": pytest.approx(37.0), "group_ece": {"head": pytest.approx(24.0), "medium": None,
                                                                 "tail": pytest.approx(60.0)}}
    # τ = 2 lifts the tail class by 2·log 9 = 4.4 over the head class, more than any image's log-odds (at most
    # log 9 = 2.2): every image goes to the tail class.
    at_two = curve[-1]
    assert at_two["groups"] == {"head": 0.0, "medium": None, "tail": 100.0} and at_two["overall"] == 50.0


def test_bad_shapes_are_one_sentence():
    with pytest.raises(ValueError, match="do not fit 2 classes"):
        long_tail_report(np.zeros((4, 3)), LABELS, GROUPS)
    with pytest.raises(ValueError, match="class indices from 0 to 1"):
        long_tail_report(two_class_logits(), np.array([0, 1, 2, 0]), GROUPS)


# --- the card -------------------------------------------------------------------------------------------------


def annotated_card() -> ModelCard:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    logits = rng.normal(size=(60, 3)) + 2.0 * np.eye(3)[labels]
    card = make_card()
    return make_card(tau_curve=tau_curve(logits, labels, card.class_counts, card.class_groups),
                     long_tail=long_tail_report(logits, labels, card.class_groups))


def test_tau_point_interpolates_between_grid_points_and_clamps_to_the_grid():
    card = annotated_card()
    low, high = card.tau_curve[5], card.tau_curve[6]  # τ = 0.25 and 0.5
    point = card.tau_point(0.4)
    assert point["tau"] == 0.4
    assert point["overall"] == pytest.approx(low["overall"] + 0.6 * (high["overall"] - low["overall"]))
    assert point["groups"]["tail"] == pytest.approx(low["groups"]["tail"] + 0.6 * (high["groups"]["tail"]
                                                                                  - low["groups"]["tail"]))
    assert point["group_ece"]["head"] == pytest.approx(low["group_ece"]["head"] + 0.6 * (high["group_ece"]["head"]
                                                                                        - low["group_ece"]["head"]))
    assert card.tau_point(0.5) == high
    assert card.tau_point(4.0) == card.tau_curve[-1] and card.tau_point(-5.0) == card.tau_curve[0]
    assert make_card().tau_point(1.0) is None


def test_a_group_without_value_stays_none_when_interpolated():
    curve = [{"tau": 0.0, "overall": 50.0, "groups": {"head": 60.0, "medium": None, "tail": 40.0}, "ece": 10.0,
              "group_ece": {"head": 5.0, "medium": None, "tail": 20.0}},
             {"tau": 1.0, "overall": 60.0, "groups": {"head": 50.0, "medium": None, "tail": 70.0}, "ece": 6.0,
              "group_ece": {"head": 7.0, "medium": None, "tail": 10.0}}]
    point = make_card(tau_curve=curve).tau_point(0.25)
    assert point == {"tau": 0.25, "overall": 52.5, "groups": {"head": 57.5, "medium": None, "tail": 47.5},
                     "ece": 9.0, "group_ece": {"head": 5.5, "medium": None, "tail": 17.5}}


def test_the_figures_survive_the_onnx_metadata_and_old_files_read_as_none(tmp_path_factory, tmp_path):
    card = annotated_card()
    path = write_model(tiny_net_path(tmp_path_factory), tmp_path / "annotated.onnx", card)
    props = {entry.key: entry.value for entry in onnx.load(path).metadata_props}
    again = ModelCard.from_metadata_props(props)
    assert again.tau_curve == card.tau_curve and again.long_tail == card.long_tail
    assert again.tau_point(0.3) == card.tau_point(0.3)

    old = {key: value for key, value in props.items() if key not in ("tau_curve", "long_tail")}
    before = ModelCard.from_metadata_props(old)  # a file exported before the figures existed
    assert before.tau_curve is None and before.long_tail is None and before.tau_point(1.0) is None


def test_the_checkpoint_json_does_not_carry_export_time_figures():
    info = annotated_card().to_checkpoint_info()
    assert "tau_curve" not in info and "long_tail" not in info


def test_the_markdown_card_has_small_tables_of_the_figures_and_old_cards_none():
    text = markdown_document(annotated_card(), "tiny")
    assert "## Post-hoc logit adjustment on the test set (%)" in text
    curve_table = text.split("## Post-hoc logit adjustment")[1].split("## Accuracy per class")[0]
    assert [line.split(" | ")[0] for line in curve_table.splitlines() if line.startswith("| ")][1:] == [
        f"| {tau:g}" for tau in TAU_GRID]
    assert "| cat | 500 | head |" in text and "## Confusion matrix" in text and "| true class | cat | dog | bird |" in text
    assert "## Calibration per group" in text and "Expected calibration error (%): head " in text
    plain = markdown_document(make_card(), "tiny")
    assert "logit adjustment" not in plain and "Confusion" not in plain and "Calibration" not in plain
