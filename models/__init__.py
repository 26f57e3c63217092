"""Network definitions behind a timm-style registry.

    model = create_model("resnet32", num_classes=10)
    model = create_model("efficientnet_lite0", num_classes=10, pretrained="imagenet", input_size=128)
    model.forward_features(x)  # (N, model.num_features) pooled features
    model.forward_head(feats)  # (N, num_classes) logits
    model.preprocessing        # input size, mean, std, interpolation, crop_pct

Method heads (projection MLPs, second branches) attach to `forward_features`, never by copying a backbone.
Pretrained backbones (EfficientNet-Lite0 with offline ImageNet weights, any `timm:<architecture>`) are
models/efficientnet_lite.py and models/timm_backbone.py; their weight sources are models/pretrained.py.
"""

import torchvision_compat  # noqa: F401  (must run before anything imports torchvision)
from models import efficientnet_lite, resnet_cifar, resnet_imagenet  # noqa: F401,E402  (registers the models)
from models.pretrained import PretrainedWeightsError, check_source
from models.registry import create_model, get_preprocessing, has_model, list_models, register_model

__all__ = ["PretrainedWeightsError", "check_source", "create_model", "get_preprocessing", "has_model", "list_models",
           "register_model"]
