"""ConCutMix (Pan et al., TIP 2024): Balanced Contrastive Learning plus CutMix whose area-based labels are
rectified by semantic similarity to the class centres. Spec: docs/methods.md §3, checked against the official
code (PanHaulin/ConCutMix); deviations are listed in docs/results.md.

One training step (§3.4):
  background a (instance-sampled, 3 views) and foreground b (class-balanced, classification view only);
  with probability `cutmix_prob`: paste a box of b¹ (permuted) onto a¹, λ recomputed from the box area,
      area label y_a = λ·y_A + (1−λ)·y_B; after `label_warmup_epochs` epochs plus one the label becomes
      y = ρ·y_s + (1−ρ)·y_a, y_s from inverse distances to the class centres (top-k, L1-normalised);
  one forward pass of [x̃; a²; a³]; L = α·CE_LA(x̃, y) + β·BCL(a², a³, centres).
The deployed model is the backbone with its classifier; the heads exist only for training.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from training.config import ConfigError
from training.contrastive import balanced_contrastive_loss
from training.data.batch_augment import (
    BatchAugment,
    OnDeviceViews,
    augments_on_device,
    contrastive_view,
    strong_classification_view,
)
from training.data.transforms import contrastive_transform, native_size, strong_classification_transform
from training.distributed import all_gather, shard, world_size
from training.losses import build_loss
from training.methods.base import Method
from training.mixing import cutmix_box, paste_box, sample_beta
from training.registry import register_method


@dataclasses.dataclass
class ConCutMixOptions:
    feat_dim: int = 128  # contrastive embedding size (CIFAR 128, ImageNet 1024)
    hidden_dim: int = 512  # projection MLP width d′ (CIFAR 512, ImageNet 2048)
    normed_classifier: bool = False  # cosine classifier (ImageNet scripts' --use_norm) instead of Linear
    cosine_scale: float = 30.0
    alpha: float = 2.0  # weight of the classification loss
    beta: float = 0.6  # weight of the balanced contrastive loss
    temperature: float = 0.1
    cutmix_prob: float = 0.5  # one draw per batch
    cutmix_beta: float = 1.0  # λ ~ Beta(a, a)
    # l_d_warm: area labels while the 0-based epoch is <= this (the code's `epoch > l_d_warm` test), then rectified
    label_warmup_epochs: int = 100
    topk: int = 3  # classes kept in the semantic label
    omega: float = 2 / 255  # ρ scale (the code's scaling_factor[0] / scaling_factor[1])
    # released: ρ = ω·log(Σ N_k y_a,k) / Σ log N_k (about 1e-3 on CIFAR-10-LT: the label barely moves);
    # normalised: the log area-weighted count scaled to [0, 1] between the rarest and the commonest class;
    # none: ρ = 0, the area label throughout (the ablation's "no rectification")
    rectification: str = "released"
    foreground_sampler: str = "balance"  # balance | reverse (∝ n_max/n_c) | instance (the long-tailed data)

    def __post_init__(self):  # parse_options builds this, so a bad value fails before any data is read
        if self.foreground_sampler not in FOREGROUND_SAMPLERS:
            raise ConfigError(f"method_options.foreground_sampler must be one of {', '.join(FOREGROUND_SAMPLERS)}; "
                              f"got '{self.foreground_sampler}'")
        if self.rectification not in RECTIFICATIONS:
            raise ConfigError(f"method_options.rectification must be one of {', '.join(RECTIFICATIONS)}; "
                              f"got '{self.rectification}'")
        if not 0 <= self.cutmix_prob <= 1 or self.topk < 1 or self.temperature <= 0:
            raise ConfigError("method_options: cutmix_prob must lie in [0, 1], topk >= 1 and temperature > 0")


FOREGROUND_SAMPLERS = ("balance", "reverse", "instance")
RECTIFICATIONS = ("released", "normalised", "none")


# ------------------------------------------------------------------------------------------ formulas


def semantic_label(embedding: torch.Tensor, centres: torch.Tensor, topk: int) -> torch.Tensor:
    """y_s: inverse Euclidean distances from each (unnormalised) embedding to the (unnormalised) class
    centres, the top-k kept, L1-normalised. No softmax, no temperature; no gradient."""
    embedding, centres = embedding.detach().float(), centres.detach().float()
    distances = torch.cdist(embedding, centres, compute_mode="donot_use_mm_for_euclid_dist")
    similarity = 1.0 / distances.clamp_min(1e-12)
    top = similarity.topk(min(topk, similarity.shape[1]), dim=1)
    kept = torch.zeros_like(similarity).scatter(1, top.indices, top.values)
    return kept / kept.sum(dim=1, keepdim=True)


def rectification_weight(area_label: torch.Tensor, class_counts: torch.Tensor, omega: float) -> torch.Tensor:
    """ρ = ω · log(Σ_k N_k y_a,k) / Σ_k log N_k per sample, shape (B, 1): the log of the area-weighted
    class count, so mixes dominated by head classes lean more on the semantic label."""
    counts = class_counts.to(area_label)
    return omega * torch.log(area_label @ counts)[:, None] / torch.log(counts).sum()


def normalised_rectification_weight(area_label: torch.Tensor, class_counts: torch.Tensor) -> torch.Tensor:
    """ρ = (log Σ_k N_k y_a,k − log N_min) / (log N_max − log N_min), shape (B, 1): the released formula's
    log area-weighted count, scaled to span [0, 1] (a mix of the rarest classes keeps its area label, a mix of
    the commonest takes the semantic label), as the paper's text reads ρ rather than as its code computes it."""
    counts = class_counts.to(area_label)
    low, high = torch.log(counts.min()), torch.log(counts.max())
    if high == low:  # balanced data: no class is more "head" than another, nothing to rectify
        return torch.zeros(len(area_label), 1, dtype=area_label.dtype, device=area_label.device)
    return ((torch.log(area_label @ counts) - low) / (high - low)).clamp(0, 1)[:, None]


def rectified_label(area_label: torch.Tensor, semantic: torch.Tensor, class_counts: torch.Tensor,
                    omega: float, rectification: str = "released") -> torch.Tensor:
    if rectification == "none":
        return area_label
    if rectification == "normalised":
        rho = normalised_rectification_weight(area_label, class_counts)
    else:
        rho = rectification_weight(area_label, class_counts, omega)
    return rho * semantic + (1.0 - rho) * area_label


# --------------------------------------------------------------------------------------------- model


class NormedLinear(nn.Module):
    """Cosine classifier: s · cos(feature, w_c). Weight rows are classes, like nn.Linear."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(F.normalize(torch.empty(num_classes, in_features).uniform_(-1, 1), dim=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).T


def projection_mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_features))


class BCLModel(nn.Module):
    """Backbone + classifier (what is deployed), a projection head h, and a centre head g that maps each
    class's classifier weight w_c to its centre: one centre per class (docs/methods.md §3.2, shape caveat)."""

    def __init__(self, backbone: nn.Module, num_classes: int, options: ConCutMixOptions):
        super().__init__()
        if options.normed_classifier:
            backbone.fc = NormedLinear(backbone.num_features, num_classes, options.cosine_scale)
        self.backbone = backbone
        self.head = projection_mlp(backbone.num_features, options.hidden_dim, options.feat_dim)
        self.centre_head = projection_mlp(backbone.num_features, options.hidden_dim, options.feat_dim)
        self.centre_head.sync_batchnorm = False  # under DDP: its input, the classifier weights, is the same on every rank
        self.preprocessing, self.model_name = backbone.preprocessing, backbone.model_name

    def forward(self, images: torch.Tensor) -> dict:
        """Unnormalised `embedding` (N, feat_dim) and `centres` (C, feat_dim), and the `logits`."""
        features = self.backbone.forward_features(images)
        return {"logits": self.backbone.forward_head(features), "embedding": self.head(features),
                "centres": self.centre_head(self.backbone.fc.weight)}


# ---------------------------------------------------------------------------------------------- data


class BackgroundForegroundDataset(Dataset):
    """Item i: training image i as the background (a shuffled loader samples instances, following the long
    tail) in three views, plus a foreground image drawn by `sampler` in the classification view.

    Returns ((a¹, a², a³, b¹), (y_A, y_B)). The official code also computes b², b³ and discards them;
    skipping them changes nothing but the time spent."""

    def __init__(self, base, views: tuple, foreground_view, sampler: str = "balance"):
        self.base = base.with_transform(None)
        self.labels = base.labels
        self.views, self.foreground_view = views, foreground_view
        counts = np.bincount(self.labels)
        self.members = [np.flatnonzero(self.labels == c) for c in range(len(counts))]
        present = counts > 0
        weights = {"balance": present.astype(float),
                   "reverse": np.where(present, counts.max() / np.maximum(counts, 1), 0.0),
                   "instance": counts.astype(float)}[sampler]
        self.class_probabilities = torch.as_tensor(weights / weights.sum())

    def __len__(self):
        return len(self.labels)

    def pick(self, index) -> tuple[list[int], tuple[int, int]]:
        """([background index x 3, foreground index], (y_A, y_B)): the images of the item's four views.
        torch's generator: the trainer's loader seeds it per image and epoch (training/data/loading.py), so reruns,
        any DataLoader worker and any process draw the same foreground for this image."""
        foreground_class = int(torch.multinomial(self.class_probabilities, 1).item())
        members = self.members[foreground_class]
        foreground = int(members[torch.randint(len(members), ()).item()])
        return [index] * 3 + [foreground], (int(self.labels[index]), foreground_class)

    def __getitem__(self, index):
        image_indices, labels = self.pick(index)
        image, _ = self.base[index]
        foreground, _ = self.base[image_indices[-1]]
        views = tuple(view(image) for view in self.views)
        return (*views, self.foreground_view(foreground)), labels

    def on_device(self, views: tuple) -> OnDeviceViews:
        """The device path: the same picks, the four views (`views`: batch_augment's) applied on the device."""
        return OnDeviceViews(len(self), self.pick, BatchAugment(self.base.images, views), self.labels)


# -------------------------------------------------------------------------------------------- method


@register_method("concutmix")
class ConCutMixMethod(Method):
    options_class = ConCutMixOptions

    def __init__(self, config, class_counts):
        super().__init__(config, class_counts)
        if min(class_counts) < 1:
            raise ConfigError("ConCutMix needs at least one training image in every class "
                              f"(counts {class_counts}): the centres and ρ use log N_c")
        self.class_counts = torch.as_tensor(class_counts, dtype=torch.float64)
        self.loss = build_loss(config.loss.name, class_counts, config.loss.tau)

    def build_model(self) -> nn.Module:
        backbone = self.config.model.build(self.num_classes)
        return BCLModel(backbone, self.num_classes, self.options)

    def train_dataset(self, bundle, preprocessing):
        classification = strong_classification_transform(preprocessing, bundle.kind, native_size=native_size(bundle))
        contrastive = contrastive_transform(preprocessing, bundle.kind, native_size(bundle))
        dataset = BackgroundForegroundDataset(bundle.train, (classification, contrastive, contrastive), classification,
                                              self.options.foreground_sampler)
        if not augments_on_device(self.config.data.augment_on, bundle.kind):
            return dataset
        classification, contrastive = strong_classification_view(preprocessing), contrastive_view(preprocessing)
        return dataset.on_device((classification, contrastive, contrastive, classification))

    def training_loss(self, model, batch, epoch: int):
        """Under DDP `batch` is this rank's part of the global batch, and the step is the one-process step on
        the global batch: the random draws (mix or not, λ, box, pairing) come from torch's global generator,
        which every rank seeds and consumes alike; the foregrounds are paired over the global batch (gathered
        on mixing steps) and BCL runs over the global batch's embeddings (gathered with their gradients)."""
        (view1, view2, view3, foreground), (labels, foreground_labels) = batch
        options, batch_size = self.options, len(labels)
        mixed = torch.rand(()).item() < options.cutmix_prob
        if mixed:
            # Which foreground of the global batch each background gets; this rank keeps its backgrounds' part.
            permutation = shard(torch.randperm(batch_size * world_size()))
            lam = sample_beta(options.cutmix_beta)
            view1, lam = paste_box(view1, all_gather(foreground)[permutation.to(view1.device)],
                                   cutmix_box(*view1.shape[-2:], lam))
            other_labels = all_gather(foreground_labels)[permutation.to(labels.device)]
            area_label = (lam * F.one_hot(labels, self.num_classes).float()
                          + (1.0 - lam) * F.one_hot(other_labels, self.num_classes).float())

        outputs = model(torch.cat([view1, view2, view3]))
        logits = outputs["logits"][:batch_size]
        # [a² of the global batch; a³ of the global batch], the order one process has
        embeddings = torch.cat([all_gather(F.normalize(view.float(), dim=1))
                                for view in outputs["embedding"][batch_size:].chunk(2)])
        global_labels = all_gather(labels)
        centres = F.normalize(outputs["centres"].float(), dim=1)

        classifier_loss = self.loss.to(logits.device)
        if not mixed:
            classification = classifier_loss(logits, labels)
        elif epoch <= options.label_warmup_epochs:
            # Soft CE with the area label = λ·CE(y_A) + (1−λ)·CE(y_B), the code's hard-label form.
            classification = classifier_loss(logits, area_label)
        else:
            semantic = semantic_label(outputs["embedding"][:batch_size], outputs["centres"], options.topk)
            target = rectified_label(area_label, semantic, self.class_counts.to(logits.device), options.omega,
                                     options.rectification)
            classification = classifier_loss(logits, target)
        contrastive = balanced_contrastive_loss(embeddings, global_labels.repeat(2), centres, options.temperature)
        return options.alpha * classification + options.beta * contrastive

    def batch_size(self, batch) -> int:
        return len(batch[1][0])

    def classifier(self, model: nn.Module) -> nn.Module:
        return model.backbone
