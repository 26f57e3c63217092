"""A tiny ONNX classifier with (or without) our model card, made without `training/`.

A 3x32x32 -> 3 class conv net, exported once per test session; tests copy the file and rewrite
its metadata with `write_model`.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from inference.card import ModelCard, Preprocessing, embed_card

CLASS_NAMES = ["cat", "dog", "bird"]
CLASS_COUNTS = [500, 60, 7]
CLASS_GROUPS = ["many", "medium", "few"]
GROUP_RULE = {"rule": "count", "many_above": 100, "few_below": 20}
METRICS = {
    "last_epoch": {
        "epoch": 200,
        "test": {
            "overall": 71.5,
            "groups": {"count": {"many": 90.0, "medium": 70.25, "few": 40.0}, "rank": {"many": 90.0, "medium": None, "few": 55.0}},
            "per_class": [90.0, 70.25, 40.0],
        },
    },
    "val_selected": {
        "epoch": 180,
        "val": {"overall": 73.0, "groups": {"count": {"many": 91.0, "medium": 72.0, "few": 45.0}}},
        "test": {"overall": 72.0, "groups": {"count": {"many": 89.0, "medium": 71.0, "few": 43.5}}},
    },
}


def make_card(**overrides) -> ModelCard:
    values = dict(
        class_names=list(CLASS_NAMES),
        class_counts=list(CLASS_COUNTS),
        class_groups=list(CLASS_GROUPS),
        group_rule=dict(GROUP_RULE),
        preprocessing=Preprocessing(input_size=[3, 32, 32], mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], crop_pct=0.875),
        model_name="tinynet",
        method="ce",
        dataset="toy-lt",
        imbalance_factor=71.4,
        metrics=METRICS,
        git_revision="abc1234",
    )
    values.update(overrides)
    return ModelCard(**values)


def export_tiny_net(path: Path, num_classes: int = 3) -> Path:
    """Export a seeded tiny conv net with a dynamic batch axis and no metadata."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    # The same exporter as training/ uses (dynamo, one file); about 3 s on two cores.
    torch.onnx.export(
        model, (x,), str(path), dynamo=True, external_data=False, verbose=False,
        input_names=["image"], output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    return path


def write_model(source: Path, target: Path, card: ModelCard | None) -> Path:
    """Copy an ONNX file, embedding `card` (or removing all metadata when it is None)."""
    model = onnx.load(str(source))
    if card is None:
        del model.metadata_props[:]
    else:
        embed_card(model, card)
    onnx.save(model, str(target))
    return target


def tiny_net_path(tmp_path_factory) -> Path:
    """The exported tiny net without metadata, shared by every test module of the session."""
    path = tmp_path_factory.getbasetemp() / "tiny_net_raw.onnx"
    if not path.exists():
        export_tiny_net(path)
    return path


def identity_model(path: Path, input_shape: list) -> Path:
    """A graph that returns its input unchanged, to test shape checks without torch."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])],
        "identity",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, input_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
