"""Fitting DLSA's FlowGMM to frozen features (docs/methods.md §2.3): class-balanced positive/negative pairs,
reverse-frequency weights, the weighted NLL + purity + balance objective, and per-epoch selection of the
flow with the most pure clusters.

    record = fit_flow(flow, features, labels, FlowFitSettings(...), seed=0)

`features` and `labels` are the samples this stage models (on the device the flow is on); the flow is
left holding the selected epoch's weights.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
import torch.nn.functional as F

from training.methods.flows import FlowGMM


@dataclasses.dataclass
class FlowFitSettings:
    epochs: int = 50
    batch_size: int = 1024
    lr: float = 0.2
    lambda_lh: float = 2.0
    lambda_pur: float = 0.02
    lambda_bal: float = 1.0
    weight_q: float = 2.0
    ema_momentum: float = 0.7
    min_purity: float = 0.7
    min_size: int = 10
    max_cluster_size: int = 5000
    score_batch_size: int = 4096  # for scoring only; no effect on the result


def reverse_frequency_weights(counts: torch.Tensor, q: float = 2.0) -> torch.Tensor:
    """w_c = (n_max / n_c)^q / sum_c' (n_max / n_c')^q over the classes present; 0 for absent classes."""
    counts = counts.double()
    present = counts > 0
    raw = torch.where(present, (counts.max() / counts.clamp_min(1)) ** q, torch.zeros_like(counts))
    return (raw / raw.sum()).float()


class PairSampler:
    """Each item: a positive class and a different negative class, both uniform over the classes present,
    then one uniform sample of each; epoch length = number of samples, as the reference's dataset."""

    def __init__(self, labels: torch.Tensor):
        labels = labels.cpu()
        counts = torch.bincount(labels)
        self.classes = torch.nonzero(counts > 0).flatten()
        if len(self.classes) < 2:
            raise ValueError("the flow's pair sampler needs samples of at least 2 classes")
        self.order = torch.argsort(labels, stable=True)  # sample indices grouped by class
        self.sizes = counts[self.classes]
        self.starts = torch.cumsum(counts, 0)[self.classes] - self.sizes
        self.length = len(labels)

    def _member(self, class_slot: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        offset = (torch.rand(len(class_slot), generator=generator) * self.sizes[class_slot]).long()
        return self.order[self.starts[class_slot] + offset.clamp_max(self.sizes[class_slot] - 1)]

    def sample(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive indices, negative indices), each (length,)."""
        num_classes = len(self.classes)
        positive = torch.randint(num_classes, (self.length,), generator=generator)
        negative = (positive + 1 + torch.randint(num_classes - 1, (self.length,), generator=generator)) % num_classes
        return self._member(positive, generator), self._member(negative, generator)


class PosteriorBalance:
    """KL(p̄ ‖ uniform) of an EMA (Adam-style bias-corrected) of the batch-mean posterior; only the current
    batch's share of the EMA carries gradient."""

    def __init__(self, num_clusters: int, momentum: float = 0.7):
        self.momentum, self.steps, self.average = momentum, 0, torch.zeros(num_clusters)
        self.log_clusters = math.log(num_clusters)

    def __call__(self, mean_posterior: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        average = self.momentum * self.average.to(mean_posterior.device) + (1 - self.momentum) * mean_posterior
        self.average = average.detach()
        corrected = average / (1 - self.momentum ** self.steps)
        return (corrected * torch.log(corrected)).sum() + self.log_clusters


def pair_losses(flow: FlowGMM, positives: torch.Tensor, negatives: torch.Tensor, weights: torch.Tensor,
                balance: PosteriorBalance) -> dict[str, torch.Tensor]:
    """The three terms of §2.3 on one batch. Positives and negatives go through the flow as one batch, so
    batch norm sees (and its running statistics follow) the class-balanced mixture of both."""
    u, log_det = flow(torch.cat([positives, negatives]))
    log_joint = flow.joint_from_latent(u, log_det)
    positive_joint, negative_joint = log_joint[:len(positives)], log_joint[len(positives):]
    nll = -(weights * flow.marginal_from_joint(positive_joint)).mean()
    positive_posterior = torch.softmax(positive_joint, dim=1)
    # The negative cross-entropy: minimising it pushes other classes out of the positive's clusters.
    purity = (positive_posterior.detach() * F.log_softmax(negative_joint, dim=1)).sum(dim=1).mean()
    return {"nll": nll, "purity": purity, "balance": balance(positive_posterior.mean(dim=0) + 1e-7)}


@torch.no_grad()
def score(flow: FlowGMM, features: torch.Tensor, batch_size: int = 4096, latent: bool = False):
    """(log p(x) (N,), hard cluster (N,), latent u (N, D) or None) in eval mode."""
    flow.eval()
    log_probs, clusters, latents = [], [], []
    for chunk in features.split(batch_size):
        u, log_det = flow(chunk)
        log_joint = flow.joint_from_latent(u, log_det)
        log_probs.append(flow.marginal_from_joint(log_joint))
        clusters.append(log_joint.argmax(dim=1))
        latents.append(u)
    return torch.cat(log_probs), torch.cat(clusters), torch.cat(latents) if latent else None


def cluster_statistics(clusters: torch.Tensor, labels: torch.Tensor, num_clusters: int, num_classes: int,
                       min_purity: float = 0.7, min_size: int = 10) -> dict:
    """Pure clusters: purity (majority-class share) > min_purity and size > min_size; the largest size."""
    histogram = torch.bincount(clusters * num_classes + labels, minlength=num_clusters * num_classes)
    histogram = histogram.view(num_clusters, num_classes)
    sizes = histogram.sum(dim=1)
    purity = histogram.max(dim=1).values / sizes.clamp_min(1)
    pure = (purity > min_purity) & (sizes > min_size)
    return {"pure_clusters": int(pure.sum()), "largest_cluster": int(sizes.max()),
            "used_clusters": int((sizes > 0).sum())}


def fit_flow(flow: FlowGMM, features: torch.Tensor, labels: torch.Tensor, settings: FlowFitSettings,
             seed: int = 0, log=print) -> dict:
    """Plain SGD (no momentum, no weight decay, constant LR); after every epoch the samples this flow models
    (all training samples at depth 1, the remaining ones deeper) are hard-assigned and the epoch with the most
    pure clusters (largest cluster < max_cluster_size) is kept. If no epoch meets the size limit, the last
    epoch is kept and the record says so. The balance term's EMA runs across all epochs of the fit."""
    num_classes = int(labels.max()) + 1
    class_weights = reverse_frequency_weights(torch.bincount(labels, minlength=num_classes), settings.weight_q)
    class_weights = class_weights.to(features.device)
    sampler = PairSampler(labels)
    balance = PosteriorBalance(flow.num_clusters, settings.ema_momentum)
    optimizer = torch.optim.SGD(flow.parameters(), lr=settings.lr, momentum=0.0, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    history, best, best_state = [], None, None
    for epoch in range(1, settings.epochs + 1):
        flow.train()
        positives, negatives = sampler.sample(generator)
        num_batches = max(len(positives) // settings.batch_size, 1)  # drop the last partial batch
        totals = {"loss": 0.0, "nll": 0.0, "purity": 0.0, "balance": 0.0}
        for batch in range(num_batches):
            chunk = slice(batch * settings.batch_size, (batch + 1) * settings.batch_size)
            pos, neg = positives[chunk].to(features.device), negatives[chunk].to(features.device)
            terms = pair_losses(flow, features[pos], features[neg], class_weights[labels[pos]], balance)
            loss = (settings.lambda_lh * terms["nll"] + settings.lambda_pur * terms["purity"]
                    + settings.lambda_bal * terms["balance"])
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"flow loss became {loss.item()} at epoch {epoch}, batch {batch + 1}; lower method_options.flow_lr, "
                    f"or set method_options.feature_norm=true (the features span {float(features.min()):.3g} to "
                    f"{float(features.max()):.3g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for key, value in dict(terms, loss=loss).items():
                totals[key] += value.item() / num_batches
        _, clusters, _ = score(flow, features, settings.score_batch_size)
        stats = cluster_statistics(clusters, labels, flow.num_clusters, num_classes, settings.min_purity,
                                   settings.min_size)
        history.append(dict(epoch=epoch, **totals, **stats))
        log(f"  flow epoch {epoch}/{settings.epochs}  loss {totals['loss']:.4f}  pure clusters "
            f"{stats['pure_clusters']}  largest {stats['largest_cluster']}")
        admissible = stats["largest_cluster"] < settings.max_cluster_size
        if admissible and (best is None or stats["pure_clusters"] > best["pure_clusters"]):
            best, best_state = history[-1], copy.deepcopy(flow.state_dict())
    if best_state is not None:
        flow.load_state_dict(best_state)
    flow.eval()
    return {"selected_epoch": best["epoch"] if best else settings.epochs,
            "selection": "most pure clusters" if best else
                         f"no epoch had every cluster under {settings.max_cluster_size} samples; last epoch kept",
            "history": history}
