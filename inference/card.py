"""The model card: what a trained classifier knows about its data, in one typed record, and how it is stored and shown.

One card travels the whole way (docs: README "Architecture"):

    training (training/run.py `describe_training`) → the checkpoint's JSON (`ModelCard.to_checkpoint_info`)
    → export (`ModelCard.from_checkpoint_info`, `embed_card`) → the ONNX file's `metadata_props`
    → every reader (`ModelCard.from_metadata_props`: the classifier, the service, the app, push)

Groups have one stored form, GROUPS (the literature's many / medium / few, as in every file written so far),
and one display form, `group_name` (head / medium / tail), used by the CLI tables, the cards, HTTP and the app.
Metadata values are JSON strings; the format key marks our files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT_KEY = "longtail_studio.format"
FORMAT_VERSION = "1"

GROUPS = ("many", "medium", "few")  # stored: checkpoints, ONNX metadata, JSON records
GROUP_NAMES = {"many": "head", "medium": "medium", "few": "tail"}  # shown to people


def group_name(group: str) -> str:
    """The display name of a stored group: many → head, medium → medium, few → tail."""
    return GROUP_NAMES[group]


class MissingMetadataError(ValueError):
    """An ONNX file that was not exported by this project (or lost its metadata)."""


@dataclass
class Preprocessing:
    input_size: list[int]  # (channels, height, width)
    mean: list[float]
    std: list[float]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0  # resize the shorter side to size / crop_pct, then centre-crop
    # The side of the square images the model was trained on when they are smaller than its input (CIFAR's 32 px,
    # upsampled to 128 for a pretrained backbone); 0 when the training images were resized straight to the input.
    # Served images first become such a thumbnail (shorter side to native_size, centre square) and are then
    # resized as the training images were, so that a sharp photo looks to the model like what it learnt from.
    native_size: int = 0

    @property
    def resize_to(self) -> int:
        return int(round(min(self.input_size[1:]) / self.crop_pct))

    @property
    def decoded_size(self) -> int:
        """The shorter side an image is first resized to: native_size when set, else resize_to."""
        return self.native_size or self.resize_to

    def describe(self) -> str:
        """The served geometry in words, the one wording of the card document and the app's card, e.g.
        "shorter side to 32 px (bicubic), centre 32×32 px (the size of its training images), then to 128 px,
        centre 128×128 px"."""
        height, width = self.input_size[1:]
        final = f"{self.resize_to} px, centre {height}×{width} px"
        if not self.native_size:
            return f"shorter side to {final} ({self.interpolation})"
        return (f"shorter side to {self.native_size} px ({self.interpolation}), centre {self.native_size}×"
                f"{self.native_size} px (the size of its training images), then to {final}")


@dataclass
class ModelCard:
    class_names: list[str]
    class_counts: list[int]
    class_groups: list[str]  # one of GROUPS per class
    group_rule: dict  # e.g. {"rule": "count", "many_above": 100, "few_below": 20}
    preprocessing: Preprocessing
    model_name: str = ""
    method: str = ""
    dataset: str = ""
    imbalance_factor: float | None = None
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    git_revision: str = ""
    checkpoint: dict = field(default_factory=dict)  # which weights these are: {"which": "val-selected", "epoch": 52}
    # int8 files only (training/quantize.py): {"format", "calibration_images", "fp32_accuracy", "int8_accuracy", ...}
    quantization: dict = field(default_factory=dict)
    # Measured on the test set by ONNX Runtime at export or `python -m training annotate` (inference/long_tail.py);
    # None in files made before. tau_curve: [{"tau", "overall", "groups", "ece", "group_ece"}] per τ of the grid;
    # long_tail: {"class_accuracy", "confusion", "calibration": {group: {"ece", "bins"}}}. Unlike the other fields
    # their groups are keyed by display name (head / medium / tail): they exist to be shown, and the app reads them so.
    tau_curve: list[dict] | None = None
    long_tail: dict | None = None

    def __post_init__(self):
        n = len(self.class_names)
        if len(self.class_counts) != n or len(self.class_groups) != n:
            raise ValueError("class_names, class_counts and class_groups must have one entry per class")
        unknown = set(self.class_groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown class groups {sorted(unknown)}; expected {GROUPS}")

    @property
    def pretrained_weights(self) -> str:
        """Where the training run's weights started (`model.pretrained` of its config: "imagenet", a file, an
        hf:// reference); "" for a network trained from scratch or a card without a config."""
        source = ((self.config or {}).get("model") or {}).get("pretrained") or "none"
        return "" if source == "none" else source

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def without_training_data(cls, class_names, preprocessing: Preprocessing, model_name: str = "") -> ModelCard:
        """The stand-in card of a foreign model (names given by the user): counts unknown, group rule "unknown"
        (its classes are stored as medium because the card needs a group; predictions report no group)."""
        n = len(class_names)
        return cls(class_names=list(class_names), class_counts=[0] * n, class_groups=["medium"] * n,
                   group_rule={"rule": "unknown"}, preprocessing=preprocessing, model_name=model_name)

    # ------------------------------------------------------------------ the checkpoint's JSON (training side)

    def to_checkpoint_info(self) -> dict:
        """The card's training-time fields, as a checkpoint's JSON stores them (metrics and which checkpoint
        are added by the trainer when they are known)."""
        info = asdict(self)
        del info["metrics"], info["checkpoint"], info["quantization"], info["tau_curve"], info["long_tail"]
        return info

    @classmethod
    def from_checkpoint_info(cls, info: dict) -> ModelCard:
        """The card of a loaded checkpoint (`training.checkpoint.load_checkpoint`'s info), field by field."""
        return cls(
            class_names=info["class_names"], class_counts=info["class_counts"], class_groups=info["class_groups"],
            group_rule=info["group_rule"], preprocessing=Preprocessing(**info["preprocessing"]),
            model_name=info.get("model_name", ""), method=info.get("method", ""), dataset=info.get("dataset", ""),
            imbalance_factor=info.get("imbalance_factor"), metrics=info.get("metrics", {}),
            config=info.get("config", {}), git_revision=info.get("git_revision", ""),
            checkpoint={"which": "val-selected" if Path(info["path"]).name == "best" else "last",
                        "epoch": info["epoch"]})

    def tau_point(self, tau: float) -> dict | None:
        """What post-hoc logit adjustment by τ does on the test set: the tau_curve entry at τ, linearly interpolated
        between grid points and clamped to the grid (its "tau" is then the grid's end); None without a curve."""
        if not self.tau_curve:
            return None
        return interpolate_curve(self.tau_curve, tau)

    # -------------------------------------------------------------------------- the ONNX file (serving side)

    def to_metadata_props(self) -> dict[str, str]:
        props = {FORMAT_KEY: FORMAT_VERSION}
        for key, value in asdict(self).items():
            props[key] = json.dumps(value)
        return props

    @classmethod
    def from_metadata_props(cls, props: dict[str, str], source: str = "model") -> ModelCard:
        if props.get(FORMAT_KEY) != FORMAT_VERSION:
            raise MissingMetadataError(
                f"{source} has no LongTail Studio metadata (key '{FORMAT_KEY}' is missing or has an "
                "unknown version). Export it with `python -m training export`, or pass the class "
                "names explicitly (--class-names) to use a foreign model."
            )
        try:
            values = {key: json.loads(props[key]) for key in cls.__dataclass_fields__ if key in props}
            values["preprocessing"] = Preprocessing(**values["preprocessing"])
            return cls(**values)
        except (KeyError, TypeError, ValueError) as error:
            raise MissingMetadataError(f"{source} has incomplete or corrupt metadata: {error}") from error


def interpolate_curve(curve: list[dict], tau: float) -> dict:
    """The entry of a τ curve at τ: linear interpolation between the two grid points around it, clamped to the
    grid. A figure that is None at either neighbour (a group without classes) is None."""
    points = sorted(curve, key=lambda entry: entry["tau"])
    tau = min(max(float(tau), points[0]["tau"]), points[-1]["tau"])
    upper = next(i for i, entry in enumerate(points) if entry["tau"] >= tau)
    low, high = points[max(upper - 1, 0)], points[upper]
    if high["tau"] == tau:
        return _mix(high, high, 0.0)
    return {**_mix(low, high, (tau - low["tau"]) / (high["tau"] - low["tau"])), "tau": tau}


def _mix(low, high, weight: float):
    if isinstance(low, dict):
        return {key: _mix(value, high.get(key), weight) for key, value in low.items()}
    if low is None or high is None:
        return None
    return low + weight * (high - low)


def embed_card(onnx_model, card: ModelCard) -> None:
    """Replace the metadata_props of an `onnx.ModelProto` with the card."""
    del onnx_model.metadata_props[:]
    for key, value in card.to_metadata_props().items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value


# ------------------------------------------------------------------------------------------- the card in words


def group_rule_text(card: ModelCard) -> str:
    """How the classes were split into head/medium/tail, in words, with the class count per group."""
    rule = dict(card.group_rule)
    kind = rule.pop("rule", None)
    if kind == "unknown":
        return "This model has no LongTail Studio metadata, so its training counts and groups are unknown."
    if kind == "count" and {"many_above", "few_below"} <= rule.keys():
        text = (
            f"Groups by training images per class: head (many-shot) = more than {rule.pop('many_above')}, "
            f"tail (few-shot) = fewer than {rule.pop('few_below')}, medium = the rest."
        )
    elif kind == "rank" and {"head_fraction", "tail_fraction"} <= rule.keys():
        text = (
            f"Groups by rank of training count: head = the {rule.pop('head_fraction'):.0%} of classes with the "
            f"most training images, tail = the {rule.pop('tail_fraction'):.0%} with the fewest, medium = the rest."
        )
    else:
        text = f"Groups by rule {kind!r}."
    if rule:
        text += " Parameters: " + ", ".join(f"{key} = {value}" for key, value in rule.items()) + "."
    sizes = ", ".join(f"{group_name(g)}: {card.class_groups.count(g)}" for g in GROUPS)
    return f"{text} Classes per group: {sizes}."


# (key in the metrics dict, split, label): the evaluations a run records, in display order.
EVALUATIONS = (
    ("last_epoch", "test", "last epoch"),
    ("val_selected", "test", "val-selected"),
    ("val_selected", "val", "val-selected, on validation"),
    ("test_oracle_best", "test", "test-selected, oracle"),
)


def evaluation_columns(metrics: dict, splits=("test", "val")) -> list[tuple[str, object, dict]]:
    """(label, epoch, evaluation) for every evaluation present in `metrics` on the given splits."""
    columns = []
    for key, split, label in EVALUATIONS:
        entry = (metrics or {}).get(key) or {}
        if split in splits and entry.get(split):
            columns.append((label, entry.get("epoch", "?"), entry[split]))
    return columns


def group_accuracy(evaluation: dict, rule: str, group: str):
    return ((evaluation.get("groups") or {}).get(rule) or {}).get(group)


def _percent(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def quantization_text(card: ModelCard) -> str:
    """One line on an int8 model: its format, calibration and test accuracy before → after; "" for float32 models."""
    record = card.quantization
    if not record:
        return ""
    form, before, after = record.get("format", {}), record.get("fp32_accuracy", {}), record.get("int8_accuracy", {})
    labels = {"overall": "overall", **{group: group_name(group) for group in GROUPS}}
    accuracy = ", ".join(f"{label} {_percent(before.get(key))} → {_percent(after.get(key))}"
                         for key, label in labels.items())
    return (f"int8 ({form.get('quant_format', '?')}, {form.get('activations', '?')} activations, "
            f"{form.get('weights', '?')} weights), calibrated on {record.get('calibration_images', '?')} training "
            f"images; test accuracy fp32 → int8 (%): {accuracy}")


def markdown_document(card: ModelCard, title: str) -> str:
    """Everything in the card, for people: data, groups, accuracy (last vs val-selected), provenance."""
    pre = card.preprocessing
    weights = card.checkpoint
    lines = [
        f"# {title}", "",
        f"- **Weights:** {weights.get('which', '?')} checkpoint, epoch {weights.get('epoch', '?')}  " if weights
        else "- **Weights:** not recorded  ",
        f"- **Method:** {card.method}  ",
        f"- **Model:** {card.model_name}  ",
        f"- **Dataset:** {card.dataset}, imbalance factor {card.imbalance_factor:g}  " if card.imbalance_factor
        else f"- **Dataset:** {card.dataset}  ",
        f"- **Input:** {pre.describe()}, mean {pre.mean}, std {pre.std}  ",
        f"- **Git revision:** `{card.git_revision}`",
        *([f"- **Quantization:** {quantization_text(card)}"] if card.quantization else []), "",
        "## Training data", "", group_rule_text(card), "",
        "| class | training images | group |", "|---|---:|---|",
    ]
    lines += [f"| {name} | {count} | {group_name(group)} |"
              for name, count, group in zip(card.class_names, card.class_counts, card.class_groups)]
    rule = card.group_rule.get("rule", "count")
    columns = evaluation_columns(card.metrics, splits=("test",))
    if columns:
        lines += ["", "## Test accuracy (%)", "",
                  "| checkpoint | epoch | overall | " + " | ".join(group_name(g) for g in GROUPS) + " |",
                  "|---|---:|---:|" + "---:|" * len(GROUPS)]
        for label, epoch, evaluation in columns:
            lines.append(f"| {label} | {epoch} | {_percent(evaluation.get('overall'))} | "
                         + " | ".join(_percent(group_accuracy(evaluation, rule, g)) for g in GROUPS) + " |")
        lines += ["", f"Groups by the {rule} rule. The val-selected checkpoint was chosen on a held-out validation "
                  "split; the oracle row picks the best test epoch, as the papers do, and is not a fair estimate."]
    lines += tau_curve_lines(card) + long_tail_lines(card)
    return "\n".join(lines) + "\n"


DISPLAY_GROUPS = tuple(group_name(g) for g in GROUPS)


def tau_curve_lines(card: ModelCard) -> list[str]:
    """The τ curve as a table (none without a curve)."""
    if not card.tau_curve:
        return []
    heads = " | ".join(DISPLAY_GROUPS)
    lines = ["", "## Post-hoc logit adjustment on the test set (%)", "",
             "Predictions from logits − τ·log(training prior), the prior from the training counts above; τ = 0 is "
             "the model as trained, τ > 0 favours the tail. Accuracy, then expected calibration error (ECE, 15 bins); "
             "measured by ONNX Runtime on the exported model.", "",
             f"| τ | overall | {heads} | ECE | {' | '.join(f'{g} ECE' for g in DISPLAY_GROUPS)} |",
             "|---:|---:|" + "---:|" * (2 * len(GROUPS) + 1)]
    for entry in card.tau_curve:
        groups, group_ece = entry.get("groups", {}), entry.get("group_ece", {})
        lines.append(f"| {entry['tau']:g} | {_percent(entry.get('overall'))} | "
                     + " | ".join(_percent(groups.get(g)) for g in DISPLAY_GROUPS) + f" | {_percent(entry.get('ece'))} | "
                     + " | ".join(_percent(group_ece.get(g)) for g in DISPLAY_GROUPS) + " |")
    return lines


def long_tail_lines(card: ModelCard) -> list[str]:
    """Accuracy per class against its training count, the confusion matrix and calibration per group, as tables
    (none without the report)."""
    report = card.long_tail
    if not report:
        return []
    lines = ["", "## Accuracy per class on the test set (%, as trained)", "",
             "| class | training images | group | accuracy |", "|---|---:|---|---:|"]
    lines += [f"| {name} | {count} | {group_name(group)} | {_percent(accuracy)} |" for name, count, group, accuracy
              in zip(card.class_names, card.class_counts, card.class_groups, report["class_accuracy"])]
    lines += ["", "## Confusion matrix on the test set (images, as trained)", "",
              "Rows: the true class; columns: the predicted class, in class order (a tail class's row shows which "
              "classes absorb its images).", "",
              "| true class | " + " | ".join(card.class_names) + " |", "|---|" + "---:|" * card.num_classes]
    lines += [f"| {name} | " + " | ".join(str(n) for n in row) + " |"
              for name, row in zip(card.class_names, report["confusion"])]
    return lines + calibration_lines(report["calibration"])


def calibration_lines(calibration: dict) -> list[str]:
    """ECE per group and the reliability diagram as rows: accuracy (images) per confidence bin and group."""
    groups = [g for g in DISPLAY_GROUPS if g in calibration]
    lines = ["", "## Calibration per group on the test set (as trained)", "",
             "Expected calibration error (%): " + ", ".join(f"{g} {_percent(calibration[g]['ece'])}" for g in groups)
             + ". Reliability: the images of each group binned by the model's confidence in its top class; a "
             "calibrated model's accuracy equals its confidence.", "",
             "| confidence (%) | " + " | ".join(f"{g}: confidence / accuracy (images)" for g in groups) + " |",
             "|---|" + "---:|" * len(groups)]
    bins = len(calibration[groups[0]]["bins"]) if groups else 0
    for b in range(bins):
        cells = [calibration[g]["bins"][b] for g in groups]
        if not any(cell["count"] for cell in cells):
            continue
        shown = [f"{cell['confidence']:.1f} / {cell['accuracy']:.1f} ({cell['count']})" if cell["count"] else "–"
                 for cell in cells]
        lines.append(f"| {100 * b / bins:.0f}–{100 * (b + 1) / bins:.0f} | " + " | ".join(shown) + " |")
    return lines
