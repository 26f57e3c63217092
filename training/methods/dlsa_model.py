"""DLSA's model and its small formulas (docs/methods.md §2): the options, one stage (flow + threshold + cluster
priors + cluster-aided classifier), the routed `DlsaModel`, and the classifier training on frozen features.
The method itself (registered as `dlsa`) is training/methods/dlsa.py; its fitting loop training/methods/dlsa_fit.py.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from training.config import ConfigError
from training.losses import BalancedSoftmaxLoss
from training.methods.flow_training import FlowFitSettings
from training.methods.flows import FlowGMM


@dataclasses.dataclass
class DlsaOptions:
    base_checkpoint: str = ""  # the run whose frozen backbone DLSA builds on (a directory or a .safetensors)
    base_which: str = "best"  # best | last checkpoint of that run
    # stages with a flow and a cluster-aided classifier (1 for CE/CBS features, 3 for PaCo); 0 leaves only the
    # regular classifier: the plain classifier retrained on the same frozen features, DLSA's baseline
    max_depth: int = 1
    llh_proportion: float = 0.3  # share of a stage's remaining training samples it claims
    num_clusters: int = 500
    centre_std: float = 0.05
    flow_hidden: int = 0  # MADE width; 0 = the feature dimension, as in the reference
    feature_norm: bool = False  # standardise features inside the flow (not in the reference; for badly scaled ones)
    flow_epochs: int = 50
    flow_batch_size: int = 1024
    flow_lr: float = 0.2
    lambda_lh: float = 2.0
    lambda_pur: float = 0.02
    lambda_bal: float = 1.0
    weight_q: float = 2.0
    ema_momentum: float = 0.7
    min_purity: float = 0.7  # flow selection only: a cluster is pure above this majority share ...
    min_size: int = 10  # ... and above this size
    max_cluster_size: int = 5000  # an epoch whose largest cluster reaches this is not selected
    classifier_epochs: int = 150
    classifier_lr: float = 1e-2  # 1e-2 on CE/CBS features, 1e-4 on PaCo features
    classifier_batch_size: int = 128
    eval_every: int = 5
    latent_z: bool = False  # z = the flow latent (the paper's figure) instead of the feature (released code)
    init_from_backbone: bool = True  # W_x starts as the base model's linear classifier

    def __post_init__(self):  # built when the config is loaded, so a bad value fails before any data is read
        check_options(self)

    def flow_settings(self) -> FlowFitSettings:
        """The flow fit's settings, field by field (here they carry a `flow_` prefix where a name would clash)."""
        return FlowFitSettings(
            epochs=self.flow_epochs, batch_size=self.flow_batch_size, lr=self.flow_lr, lambda_lh=self.lambda_lh,
            lambda_pur=self.lambda_pur, lambda_bal=self.lambda_bal, weight_q=self.weight_q,
            ema_momentum=self.ema_momentum, min_purity=self.min_purity, min_size=self.min_size,
            max_cluster_size=self.max_cluster_size)


def check_options(options: DlsaOptions) -> None:
    if options.base_which not in ("best", "last"):
        raise ConfigError(f"method_options.base_which must be best or last; got '{options.base_which}'")
    if not 0 < options.llh_proportion < 1:
        raise ConfigError("method_options.llh_proportion must lie strictly between 0 and 1")
    if options.max_depth < 0 or (options.max_depth == 0 and options.latent_z):
        raise ConfigError("method_options.max_depth cannot be negative, and latent_z needs at least one stage")
    positive = ("num_clusters", "flow_epochs", "flow_batch_size", "classifier_epochs",
                "classifier_batch_size", "eval_every")
    for name in positive:
        if getattr(options, name) < 1:
            raise ConfigError(f"method_options.{name} must be at least 1")
    if options.flow_hidden < 0 or options.centre_std < 0 or not 0 <= options.ema_momentum < 1:
        raise ConfigError("method_options: flow_hidden and centre_std cannot be negative; ema_momentum in [0, 1)")


# ---------------------------------------------------------------------------------------------- model


class StageClassifier(nn.Module):
    """logits = W_x·x + W_e·e: e = [z; p_k(x)] for a cluster-aided classifier, e = z for the regular one."""

    def __init__(self, num_features: int, extra_features: int, num_classes: int):
        super().__init__()
        self.x_branch = nn.Linear(num_features, num_classes)
        self.extra_branch = nn.Linear(extra_features, num_classes)

    def forward(self, features: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return self.x_branch(features) + self.extra_branch(extra)


class DlsaStage(nn.Module):
    """One depth: its flow, the log-likelihood threshold α_d, the class prior of every cluster and the
    cluster-aided classifier."""

    def __init__(self, num_features: int, num_classes: int, options: DlsaOptions,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.latent_z = options.latent_z
        self.flow = FlowGMM(num_features, options.num_clusters, options.flow_hidden or None,
                            centre_std=options.centre_std, generator=generator)
        self.register_buffer("threshold", torch.tensor(float("inf")))  # claims nothing until fitted
        self.register_buffer("cluster_priors", torch.zeros(options.num_clusters, num_classes))
        self.classifier = StageClassifier(num_features, num_features + num_classes, num_classes)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log p(x) (N,), logits (N, C), latent u (N, D))."""
        u, log_det = self.flow(features)
        log_joint = self.flow.joint_from_latent(u, log_det)
        prior = self.cluster_priors[log_joint.argmax(dim=1)]
        z = u if self.latent_z else features
        logits = self.classifier(features, torch.cat([z, prior], dim=1))
        return self.flow.marginal_from_joint(log_joint), logits, u


class DlsaModel(nn.Module):
    """Frozen backbone → every stage's log p and logits → the first stage whose log p reaches its threshold
    claims the sample; the regular classifier takes the rest. Routing is a torch.where cascade, so the
    graph has no data-dependent control flow and exports to ONNX as one piece."""

    def __init__(self, backbone: nn.Module, num_classes: int, options: DlsaOptions, seed: int = 0):
        super().__init__()
        self.preprocessing, self.model_name = backbone.preprocessing, backbone.model_name
        backbone.fc = nn.Identity()  # only forward_features is used; W_x holds the classifier
        self.backbone = backbone.requires_grad_(False)
        dim = backbone.num_features
        self.latent_z = options.latent_z
        self.stages = nn.ModuleList(
            DlsaStage(dim, num_classes, options, torch.Generator().manual_seed(stage_seed(seed, depth)))
            for depth in range(options.max_depth))
        self.regular = StageClassifier(dim, dim, num_classes)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        outputs = [stage(features) for stage in self.stages]
        z = outputs[-1][2] if self.latent_z else features
        logits = self.regular(features, z)
        for stage, (log_prob, stage_logits, _) in reversed(list(zip(self.stages, outputs))):
            logits = torch.where((log_prob >= stage.threshold)[:, None], stage_logits, logits)
        return logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(images))


def stage_seed(seed: int, depth: int) -> int:
    return seed * 1_000 + depth


def route(log_prob: torch.Tensor, open_mask: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """The samples a stage claims: still unassigned and log p(x) >= α_d."""
    return open_mask & (log_prob >= threshold)


def quantile_threshold(log_prob: torch.Tensor, proportion: float) -> torch.Tensor:
    """α_d: the (1 - proportion) quantile of log p over the stage's training samples (float64 for ties)."""
    return torch.quantile(log_prob.double(), 1.0 - proportion).float()


def cluster_priors(clusters: torch.Tensor, labels: torch.Tensor, num_clusters: int, num_classes: int):
    """p_k: the class histogram of the training samples hard-assigned to k, normalised (zero if empty)."""
    histogram = torch.bincount(clusters * num_classes + labels, minlength=num_clusters * num_classes)
    histogram = histogram.view(num_clusters, num_classes).float()
    return histogram / histogram.sum(dim=1, keepdim=True).clamp_min(1)


# ------------------------------------------------------------------------------------------- classifiers


def train_classifier(classifier: StageClassifier, train: tuple, counts, evaluation: dict, options: DlsaOptions,
                     seed: int) -> dict:
    """SGD (no momentum, no weight decay, constant LR) with balanced softmax on `counts`.

    `train` and every `evaluation[split]` are (features, extra, labels). Returns the classifier states of the
    last epoch, of the best validation epoch ("selected") and of the best test epoch ("oracle"), evaluated
    every `eval_every` epochs; without samples of a split, its choice falls back to the last epoch."""
    features, extra, labels = train
    loss_function = BalancedSoftmaxLoss(counts).to(features.device)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=options.classifier_lr, momentum=0.0, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    history, chosen = [], {"selected": ("val", None), "oracle": ("test", None)}
    for epoch in range(1, options.classifier_epochs + 1):
        classifier.train()
        total = 0.0
        for batch in torch.randperm(len(labels), generator=generator).split(options.classifier_batch_size):
            batch = batch.to(features.device)
            loss = loss_function(classifier(features[batch], extra[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        if epoch % options.eval_every and epoch != options.classifier_epochs:
            continue
        record = {"epoch": epoch, "loss": total / max(len(labels), 1)}
        classifier.eval()
        with torch.no_grad():
            for split, (x, e, y) in evaluation.items():
                if len(y):
                    record[f"{split}_accuracy"] = 100.0 * float((classifier(x, e).argmax(1) == y).float().mean())
        history.append(record)
        for key, (split, best) in chosen.items():
            value = record.get(f"{split}_accuracy")
            if value is not None and (best is None or value > best[0]):
                chosen[key] = (split, (value, epoch, copy.deepcopy(classifier.state_dict())))
    last = (None, options.classifier_epochs, copy.deepcopy(classifier.state_dict()))
    result = {"history": history, "last": {"epoch": last[1], "state": last[2]}}
    for key, (_, best) in chosen.items():
        best = best or last
        result[key] = {"epoch": best[1], "state": best[2]}
    return result


def init_from_linear(classifier: StageClassifier, linear: nn.Linear | None) -> None:
    if linear is not None:
        with torch.no_grad():
            classifier.x_branch.weight.copy_(linear.weight)
            classifier.x_branch.bias.copy_(linear.bias)
