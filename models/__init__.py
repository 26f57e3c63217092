"""Network definitions behind a timm-style registry.

    model = create_model("resnet32", num_classes=10)
    model.forward_features(x)  # (N, model.num_features) pooled features
    model.forward_head(feats)  # (N, num_classes) logits
    model.preprocessing        # input size, mean, std, interpolation, crop_pct

Method heads (projection MLPs, second branches) attach to `forward_features`, never by copying a backbone.
"""

import torchvision_compat  # noqa: F401  (must run before anything imports torchvision)
from models import resnet_cifar, resnet_imagenet  # noqa: F401,E402  (registers the models)
from models.registry import create_model, get_preprocessing, list_models, register_model

__all__ = ["create_model", "get_preprocessing", "list_models", "register_model"]
