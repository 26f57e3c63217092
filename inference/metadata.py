"""The model card stored in an exported ONNX file's `metadata_props`.

Export (training/export.py) writes it and every reader (the classifier, the app) parses it here,
so the schema has exactly one home. Values are JSON strings; the format key marks our files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

FORMAT_KEY = "longtail_studio.format"
FORMAT_VERSION = "1"

GROUPS = ("many", "medium", "few")
# The app speaks of head/medium/tail; tables use the literature's many/medium/few.
GROUP_DISPLAY = {"many": "head", "medium": "medium", "few": "tail"}


class MissingMetadataError(ValueError):
    """An ONNX file that was not exported by this project (or lost its metadata)."""


@dataclass
class Preprocessing:
    input_size: list[int]  # (channels, height, width)
    mean: list[float]
    std: list[float]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0  # resize the shorter side to size / crop_pct, then centre-crop

    @property
    def resize_to(self) -> int:
        return int(round(min(self.input_size[1:]) / self.crop_pct))


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
    checkpoint: dict = field(default_factory=dict)  # which weights these are: {"which": "best", "epoch": 52}

    def __post_init__(self):
        n = len(self.class_names)
        if len(self.class_counts) != n or len(self.class_groups) != n:
            raise ValueError("class_names, class_counts and class_groups must have one entry per class")
        unknown = set(self.class_groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown class groups {sorted(unknown)}; expected {GROUPS}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

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


def embed_card(onnx_model, card: ModelCard) -> None:
    """Replace the metadata_props of an `onnx.ModelProto` with the card."""
    del onnx_model.metadata_props[:]
    for key, value in card.to_metadata_props().items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value
