"""SAU (Li et al. 2024): a long-tailed training set topped up with generated images to n_max per class, one
encoder trained by a synthetic-unaware branch (MixUp + CutMix classification, real and synthetic alike) and a
synthetic-aware branch (supervised contrastive learning in which only real images make the class prototypes
and synthetic images whose label fails a nearest-neighbour check are treated as noise). Spec: docs/methods.md §1,
checked against the official code (lgX1123/gm4lt); deviations are listed in docs/results.md.

Before every epoch (start_epoch): in eval mode, the prototype P_c^v = mean of the embeddings z of the real
images of class c in view v ∈ {2, 3} (not re-normalised); a new permutation pairs every item with a partner.
One training step (§1.4), batch x¹ (three views, label y¹, is-synthetic flag) and partners x² (view 1):
  MixUp   m ~ Beta(1,1):  x_mix = m·x¹_v1 + (1−m)·x²_v1,      ỹ_mix = m·y¹ + (1−m)·y²
  CutMix  λ ~ Beta(1,1):  a box of side √(1−λ) of x²_v1 pasted onto x¹_v1, ỹ_cut = λ·y¹ + (1−λ)·y² (the
          sampled λ, not the clipped box's area)
  four forward passes, each with its own BatchNorm statistics: x_mix, x_cut, x¹_v2, x¹_v3
  label check: R = the batch's real samples + the prototypes; a synthetic sample is clean iff its nearest
      element of R by cosine has its label in view 2 and in view 3; noisy ones, by `loss_strategy`:
      pos_neg: a label of their own (−1, −2, …): positives only of their other view;
      drop:    left out of the contrastive loss;
      neg_only: label −1 and no anchor term, but still in every denominator
  L = CE_soft(x_mix, ỹ_mix) + CE_soft(x_cut, ỹ_cut) + SupCon_T([real; prototypes; synthetic], views 2 and 3)
The deployed model is the backbone with its classifier; the projection head and the prototypes exist only
for training.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from training.config import ConfigError
from training.contrastive import supervised_contrastive_loss
from training.data.batch_augment import (
    BatchAugment,
    OnDeviceViews,
    augments_on_device,
    contrastive_view,
    strong_classification_view,
    train_view,
)
from training.data.loading import make_loader
from training.data.lt_data import ArrayDataset, FileListDataset
from training.data.synthetic_set import read_synthetic_set, top_up_counts
from training.data.transforms import (
    MultipleViews,
    contrastive_transform,
    native_size,
    strong_classification_transform,
    train_transform,
)
from training.distributed import all_gather, all_reduce_sum, log
from training.engine import to_device
from training.losses import soft_cross_entropy
from training.methods.base import Method
from training.mixing import cutmix_box, mixup, paste_box, sample_beta
from training.registry import register_method

LOSS_STRATEGIES = ("pos_neg", "drop", "neg_only")


@dataclasses.dataclass
class SauOptions:
    synthetic_dir: str = ""  # a folder written by `python -m training synthesize` (required)
    top_up_to: int = 0  # images per class after the top-up, real + synthetic; 0: the largest real class
    loss_strategy: str = "pos_neg"  # what happens to synthetic samples that fail the label check
    temperature: float = 0.1
    mixup_beta: float = 1.0  # m ~ Beta(a, a)
    cutmix_beta: float = 1.0  # λ ~ Beta(a, a)
    hidden_dim: int = 2048  # projection head: Linear(d→h)-BN-ReLU-Linear(h→h)-BN-ReLU-Linear(h→feat_dim)
    feat_dim: int = 128

    def __post_init__(self):  # parse_options builds this, so a bad value fails before any data is read
        if not self.synthetic_dir:
            raise ConfigError("SAU needs method_options.synthetic_dir: a folder of generated images made with "
                              "`python -m training synthesize` (SAU without synthetic data is not SAU)")
        if self.loss_strategy not in LOSS_STRATEGIES:
            raise ConfigError(f"method_options.loss_strategy must be one of {', '.join(LOSS_STRATEGIES)}; "
                              f"got '{self.loss_strategy}'")
        if (self.top_up_to < 0 or self.temperature <= 0 or min(self.mixup_beta, self.cutmix_beta) <= 0
                or min(self.hidden_dim, self.feat_dim) < 1):
            raise ConfigError("method_options: top_up_to must be >= 0, temperature and the Beta parameters > 0, "
                              "hidden_dim and feat_dim >= 1")


# ------------------------------------------------------------------------------------------ formulas


def nearest_reference_labels(queries: torch.Tensor, references: torch.Tensor,
                             reference_labels: torch.Tensor) -> torch.Tensor:
    """The label of each query's nearest reference by cosine similarity (1-NN; ties go to the first).

    Cosine on re-normalised vectors, as the released code does (docs/methods.md §1.7): prototypes are means of
    unit-length embeddings, shorter than 1, so Euclidean distance would rank them differently."""
    similarity = F.normalize(queries.float(), dim=1) @ F.normalize(references.float(), dim=1).T
    return reference_labels[similarity.argmax(dim=1)]


@torch.no_grad()
def clean_synthetic(synthetic_views, labels: torch.Tensor, reference_views, reference_labels) -> torch.Tensor:
    """True for the synthetic samples whose nearest reference has their label in every view (§1.4 step 6)."""
    clean = torch.ones_like(labels, dtype=torch.bool)
    for queries, references in zip(synthetic_views, reference_views):
        clean &= nearest_reference_labels(queries, references, reference_labels) == labels
    return clean


def noisy_labels(labels: torch.Tensor, clean: torch.Tensor, strategy: str) -> torch.Tensor:
    """Synthetic labels for the contrastive loss: clean ones kept; noisy ones −1, −2, … (pos_neg: every noisy
    sample its own class) or all −1 (drop and neg_only; the caller drops or de-anchors them)."""
    labels = labels.clone()
    noisy = ~clean
    if strategy == "pos_neg":
        labels[noisy] = -torch.arange(1, int(noisy.sum()) + 1, device=labels.device)
    else:
        labels[noisy] = -1
    return labels


def synthetic_aware_loss(z2: torch.Tensor, z3: torch.Tensor, labels: torch.Tensor, is_synthetic: torch.Tensor,
                         prototypes: torch.Tensor, strategy: str, temperature: float) -> torch.Tensor:
    """The synthetic-aware branch (§1.4 steps 6–7): SupCon over [real; prototypes; synthetic] in views 2 and 3,
    synthetic labels checked against the real samples and prototypes. `z2`, `z3` (B, D) normalised;
    `prototypes` (2, C, D), one row per class and view, without gradient."""
    is_synthetic = is_synthetic.bool()  # a mask, never an index list
    real = ~is_synthetic
    class_labels = torch.arange(prototypes.shape[1], device=labels.device)
    reference_views = (torch.cat([z2[real], prototypes[0]]), torch.cat([z3[real], prototypes[1]]))
    reference_labels = torch.cat([labels[real], class_labels])
    synthetic_views = (z2[is_synthetic], z3[is_synthetic])
    clean = clean_synthetic(synthetic_views, labels[is_synthetic], reference_views, reference_labels)
    synthetic_labels = noisy_labels(labels[is_synthetic], clean, strategy)
    if strategy == "drop":
        synthetic_views = tuple(view[clean] for view in synthetic_views)
        synthetic_labels = synthetic_labels[clean]
    views = [torch.cat([reference, synthetic]) for reference, synthetic in zip(reference_views, synthetic_views)]
    item_labels = torch.cat([reference_labels, synthetic_labels]).repeat(2)
    anchors = item_labels != -1 if strategy == "neg_only" else None
    return supervised_contrastive_loss(torch.cat(views), item_labels, temperature, anchors)


def cutmix(images: torch.Tensor, partners: torch.Tensor, targets: torch.Tensor, partner_targets: torch.Tensor,
           beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The label uses the sampled λ, as the released code does, not the area left after clipping the box."""
    lam = sample_beta(beta)
    mixed, _ = paste_box(images, partners, cutmix_box(*images.shape[-2:], lam))
    return mixed, lam * targets + (1.0 - lam) * partner_targets


# --------------------------------------------------------------------------------------------- model


def projection_head(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_features))


class SauModel(nn.Module):
    """Backbone + classifier (what is deployed) and the projection head. Every pass computes both outputs,
    as the released model does, so the head's BatchNorm statistics also see the MixUp and CutMix batches."""

    def __init__(self, backbone: nn.Module, options: SauOptions):
        super().__init__()
        self.backbone = backbone
        self.head = projection_head(backbone.num_features, options.hidden_dim, options.feat_dim)
        self.preprocessing, self.model_name = backbone.preprocessing, backbone.model_name

    def forward(self, images: torch.Tensor) -> dict:
        """`logits` (N, C) and the L2-normalised `embedding` z (N, feat_dim), in fp32."""
        features = self.backbone.forward_features(images)
        return {"logits": self.backbone.forward_head(features),
                "embedding": F.normalize(self.head(features).float(), dim=1)}


@torch.no_grad()
def class_prototypes(model: SauModel, real_views: Dataset, num_classes: int, batch_size: int, num_workers: int,
                     device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """(2, C, D): the mean z of every class's real images in views 2 and 3, in eval mode, fp32 (§1.4 step 0).
    `real_views` yields ((view 2, view 3), label): the augmented views, as the released code embeds them.

    Under DDP every rank embeds its part of the images and the per-class sums and counts are summed over the
    ranks, so all hold the same prototypes. The views' randomness comes from a seed drawn from torch's
    generator (reseeded every epoch), so a resumed run and any number of processes draw the same views."""
    model.eval()
    seed = int(torch.randint(2**31, ()).item())
    sums, counts = None, torch.zeros(num_classes, device=device)
    for views, targets in make_loader(real_views, batch_size, num_workers, shuffle=False, seed=seed, shard=True,
                                      device=device):
        labels = torch.as_tensor(targets, device=device)
        embeddings = torch.stack([model(to_device(images, device, channels_last))["embedding"].float()
                                  for images in views])
        if sums is None:
            sums = embeddings.new_zeros(len(views), num_classes, embeddings.shape[-1])
        members = F.one_hot(labels, num_classes).to(embeddings.dtype)  # a matmul, deterministic on GPUs too
        sums += members.T @ embeddings
        counts += members.sum(dim=0)
    if sums is None:
        raise RuntimeError(f"no real image to embed for the prototypes on this process ({len(real_views)} real images)")
    return all_reduce_sum(sums) / all_reduce_sum(counts).clamp_min(1)[None, :, None]


# ---------------------------------------------------------------------------------------------- data


class _Pixels:
    """PIL image → uint8 H x W x 3 array at `size` (LANCZOS, as SAU's generator downscaled its images)."""

    def __init__(self, size: tuple[int, int]):
        self.height, self.width = size

    def __call__(self, image: Image.Image) -> np.ndarray:
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), Image.LANCZOS)
        return np.asarray(image)


def real_and_synthetic(bundle, synthetic_dir: str, top_up_to: int = 0):
    """(images, is_synthetic): the real training images followed by the first s_c synthetic images of every
    class, as one dataset of the bundle's kind. In-memory (CIFAR) data get the synthetic PNGs decoded into
    memory at the real images' size; file datasets list their paths (their random-resized crop scales them)."""
    real = bundle.train
    synthetic = read_synthetic_set(synthetic_dir, bundle.class_names)
    paths, labels = synthetic.first_per_class(top_up_counts(bundle.train_counts, top_up_to or None))
    all_labels = np.concatenate([real.labels, labels])
    if bundle.kind == "array":
        decoded = FileListDataset(paths, labels, _Pixels(real.images.shape[1:3]))
        pixels = [decoded[i][0] for i in range(len(decoded))]
        images = ArrayDataset(np.concatenate([real.images, np.stack(pixels) if pixels else real.images[:0]]), all_labels)
    else:
        images = FileListDataset(list(real.paths) + list(paths), all_labels)
    log(f"SAU: {len(real)} real + {len(paths)} synthetic training images (from {synthetic_dir})")
    return images, np.arange(len(all_labels)) >= len(real)


class RealSyntheticDataset(Dataset):
    """Item i: image i of the real + synthetic set in SAU's three views with its label and is-synthetic flag,
    and its MixUp / CutMix partner in view 1: ((x¹_v1, x¹_v2, x¹_v3, x²_v1), (y¹, y², is_synthetic¹)).

    The released code draws the partners from a second, independently shuffled loader (`mix_loader`). Here
    item i's partner is item order[i] of a permutation drawn afresh every epoch (`shuffle_partners`). The
    trainer's loader visits the items in a random order σ independent of `order`, so the partners arrive
    in the order order∘σ, which for every σ is again a uniformly random permutation independent of σ:
    exactly a second loader's shuffle, every image a partner once per epoch, with a fresh view-1 augmentation.
    """

    changes_every_epoch = True  # `order`: loader workers must not keep a copy from an earlier epoch

    def __init__(self, images, is_synthetic: np.ndarray, views: tuple):
        self.anchors = images.with_transform(MultipleViews(*views))
        self.partners = images.with_transform(views[0])
        self.labels = images.labels
        self.is_synthetic = np.asarray(is_synthetic, dtype=bool)
        self.order: torch.Tensor | None = None

    def shuffle_partners(self) -> None:
        """A new partner permutation from torch's generator, which the trainer reseeds every epoch, so a
        resumed run pairs exactly as an uninterrupted one. Set before the loader starts its workers."""
        self.order = torch.randperm(len(self.labels))

    def __len__(self):
        return len(self.labels)

    def pick(self, index) -> tuple[list[int], tuple[int, int, bool]]:
        """([index x 3, partner index], (y¹, y², is_synthetic¹)): the images of the item's four views."""
        if self.order is None:
            raise RuntimeError("RealSyntheticDataset.shuffle_partners() must run at the start of every epoch")
        partner = int(self.order[index])
        return [index] * 3 + [partner], (int(self.labels[index]), int(self.labels[partner]),
                                         bool(self.is_synthetic[index]))

    def __getitem__(self, index):
        _, targets = self.pick(index)
        views, _ = self.anchors[index]
        partner, _ = self.partners[int(self.order[index])]
        return (*views, partner), targets

    def on_device(self, images: np.ndarray, views: tuple) -> OnDeviceViews:
        """The device path: the same partners, the four views (`views`: batch_augment's) applied on the device."""
        return OnDeviceViews(len(self), self.pick, BatchAugment(images, views), self.labels)


def _real_views_on_device(real, views: tuple) -> OnDeviceViews:
    """The real images in SAU's views 2 and 3 (batch_augment's), for the prototypes on the device path."""
    labels = real.labels
    return OnDeviceViews(len(labels), lambda index: ([index, index], int(labels[index])),
                         BatchAugment(real.images, views), labels)


def sau_views(preprocessing, kind: str, size=None) -> tuple:
    """The three views of §1.5. CIFAR: crop + flip; + AutoAugment + Cutout 16; SimCLR-style. ImageNet-style:
    random-resized crop + flip + colour jitter + RandAugment; SimCLR-style twice. `size`: array images' size."""
    contrastive = contrastive_transform(preprocessing, kind, size)
    if kind == "array":
        return (train_transform(preprocessing, kind, size),
                strong_classification_transform(preprocessing, kind, cutout=16, native_size=size), contrastive)
    return strong_classification_transform(preprocessing, kind), contrastive, contrastive


def sau_device_views(preprocessing) -> tuple:
    """sau_views of an array dataset as batch_augment views."""
    return (train_view(preprocessing), strong_classification_view(preprocessing, cutout=16),
            contrastive_view(preprocessing))


# -------------------------------------------------------------------------------------------- method


@register_method("sau")
class SauMethod(Method):
    options_class = SauOptions

    def __init__(self, config, class_counts):
        super().__init__(config, class_counts)
        if config.loss.name != "ce":
            raise ConfigError("SAU trains with plain soft-label cross-entropy on its balanced real + synthetic set; "
                              f"loss.name must be ce (got {config.loss.name})")
        if min(class_counts) < 1:
            raise ConfigError(f"SAU needs at least one real image in every class for its prototypes (counts {class_counts})")
        self.train_set: RealSyntheticDataset | None = None
        self.real_views: Dataset | None = None  # the real images alone, in views 2 and 3, for the prototypes
        self.prototypes: torch.Tensor | None = None

    def build_model(self) -> nn.Module:
        return SauModel(self.config.model.build(self.num_classes), self.options)

    def train_dataset(self, bundle, preprocessing):
        views = sau_views(preprocessing, bundle.kind, native_size(bundle))
        images, is_synthetic = real_and_synthetic(bundle, self.options.synthetic_dir, self.options.top_up_to)
        self.train_set = RealSyntheticDataset(images, is_synthetic, views)
        if augments_on_device(self.config.data.augment_on, bundle.kind):
            device_views = sau_device_views(preprocessing)
            self.real_views = _real_views_on_device(bundle.train, device_views[1:])
            return self.train_set.on_device(images.images, device_views + device_views[:1])
        self.real_views = bundle.train.with_transform(MultipleViews(*views[1:]))
        return self.train_set

    def start_epoch(self, model, epoch: int, device) -> None:
        self.train_set.shuffle_partners()
        config = self.config
        self.prototypes = class_prototypes(model, self.real_views, self.num_classes, config.data.batch_size,
                                           config.data.num_workers, device, config.run.channels_last)

    def training_loss(self, model, batch, epoch: int):
        if self.prototypes is None:
            raise RuntimeError("SauMethod.start_epoch must run before every epoch (it computes the prototypes)")
        (view1, view2, view3, partner), (labels, partner_labels, is_synthetic) = batch
        targets = F.one_hot(labels, self.num_classes).float()
        partner_targets = F.one_hot(partner_labels, self.num_classes).float()
        mixed, mixed_targets = mixup(view1, partner, targets, partner_targets, self.options.mixup_beta)
        cut, cut_targets = cutmix(view1, partner, targets, partner_targets, self.options.cutmix_beta)
        # Four passes, not one concatenated batch: each gets its own BatchNorm statistics, as in the paper's code.
        outputs = [model(images) for images in (mixed, cut, view2, view3)]
        classification = (soft_cross_entropy(outputs[0]["logits"], mixed_targets)
                          + soft_cross_entropy(outputs[1]["logits"], cut_targets))
        # Under DDP the contrastive loss is that of the global batch (every rank's part gathered, gradients
        # flowing back to each part's rank): the same references, label check and SupCon as in one process.
        contrastive = synthetic_aware_loss(all_gather(outputs[2]["embedding"]), all_gather(outputs[3]["embedding"]),
                                           all_gather(labels), all_gather(is_synthetic),
                                           self.prototypes.to(labels.device), self.options.loss_strategy,
                                           self.options.temperature)
        return classification + contrastive

    def batch_size(self, batch) -> int:
        return len(batch[1][0])

    def classifier(self, model: nn.Module) -> nn.Module:
        return model.backbone
