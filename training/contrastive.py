"""Contrastive losses on L2-normalised embeddings, computed in fp32 even under autocast."""

from __future__ import annotations

import torch


def balanced_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor,
                              temperature: float) -> torch.Tensor:
    """BCL (Zhu et al. 2022), as ConCutMix uses it (docs/methods.md §3.4, step 9).

    `embeddings` (N, D): N = 2B normalised views, the anchors; `centres` (C, D): one normalised centre per
    class, carrying labels 0..C−1, contrasted against but never anchors. The denominator averages each
    class's terms: Σ_c 1/(n_c − [c = y_i]) Σ_{j ∈ c, j ≠ i} exp(z_i·z_j / T), n_c counted over views and
    centres. The numerator runs over every other item of the anchor's class (other views and its centre).
    """
    num_classes = len(centres)
    dtype = torch.promote_types(embeddings.dtype, torch.float32)  # fp32 at least, also under autocast
    anchors = embeddings.to(dtype)
    items = torch.cat([anchors, centres.to(dtype)])
    item_labels = torch.cat([labels, torch.arange(num_classes, device=labels.device)])
    class_sizes = torch.bincount(item_labels, minlength=num_classes).float()

    logits, not_self = _shifted_logits(anchors, items, temperature)
    positives = (labels[:, None] == item_labels[None, :]) & not_self

    weights = class_sizes[item_labels][None, :] - positives.float()  # n_{y_j} − [y_j = y_i]
    denominator = (torch.exp(logits) * not_self / weights).sum(dim=1, keepdim=True)
    log_probability = logits - torch.log(denominator)
    per_anchor = -(log_probability * positives).sum(dim=1) / positives.sum(dim=1)
    return per_anchor.mean()


def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float,
                                anchors: torch.Tensor | None = None) -> torch.Tensor:
    """SupCon (Khosla et al. 2020), as SAU uses it (docs/methods.md §1.4, step 7).

    `embeddings` (N, D) with `labels` (N,): every view of every item, one row each. Each row i is an anchor
    (or only those where the bool mask `anchors` is true) and a contrast item for all others:
        ℓ_i = −1/|P(i)| Σ_{p ∈ P(i)} log[exp(z_i·z_p / T) / Σ_{a ≠ i} exp(z_i·z_a / T)],
    P(i) = the other rows with label y_i. An anchor with an empty P(i) contributes 0 (the divisor becomes 1)
    but still counts in the mean over anchors, as in the released code.
    """
    dtype = torch.promote_types(embeddings.dtype, torch.float32)
    items = embeddings.to(dtype)
    logits, not_self = _shifted_logits(items, items, temperature)
    positives = (labels[:, None] == labels[None, :]) & not_self
    log_probability = logits - torch.log((torch.exp(logits) * not_self).sum(dim=1, keepdim=True))
    per_anchor = -(log_probability * positives).sum(dim=1) / positives.sum(dim=1).clamp_min(1)
    return per_anchor.mean() if anchors is None else per_anchor[anchors].mean()


def _shifted_logits(anchors: torch.Tensor, items: torch.Tensor, temperature: float):
    """z_i·z_j / T for anchor i and item j, minus each row's maximum so that exp cannot overflow (the shift
    cancels in every log-ratio), and the mask of j ≠ i: anchor i is item i."""
    logits = anchors @ items.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = torch.ones_like(logits, dtype=torch.bool)
    not_self[torch.arange(len(anchors)), torch.arange(len(anchors))] = False
    return logits, not_self
