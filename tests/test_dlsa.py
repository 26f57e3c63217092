"""DLSA: the flow's likelihood against a direct change of variables, the MADE ordering, the losses and
selection rule, routing by thresholds, the whole fit on synthetic features with known clusters, ONNX
parity of the routed model, and the CLI path (base run → DLSA → resume → evaluate → export)."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from conftest import make_images
from PIL import Image
from torch import nn

import training.methods.dlsa_fit as dlsa_fit
import training.train as trainer
from models.registry import CIFAR_PREPROCESSING
from training.__main__ import main as cli
from training.checkpoint import load_checkpoint
from training.config import ConfigError, load_config
from training.evaluate import evaluate_checkpoint
from training.export import export_checkpoint, export_onnx
from training.features import load_features
from training.methods.dlsa_model import DlsaModel, DlsaOptions, quantile_threshold, route
from training.methods.flow_training import (
    FlowFitSettings,
    PairSampler,
    PosteriorBalance,
    cluster_statistics,
    fit_flow,
    reverse_frequency_weights,
)
from training.methods.flows import MADE, FlowBatchNorm, FlowGMM

CE_CONFIG = "configs/cifar10_lt/ce.yaml"
DLSA_CONFIG = "configs/cifar10_lt/dlsa.yaml"


def randomise_batch_norm(flow: FlowGMM, generator: torch.Generator) -> None:
    """Non-trivial running statistics and affine terms, so the BN part of the log-det is exercised."""
    for layer in flow.flow.layers:
        if isinstance(layer, FlowBatchNorm):
            layer.running_mean.copy_(torch.randn(layer.running_mean.shape, generator=generator))
            layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=generator) + 0.5)
            layer.log_gamma.data.copy_(0.3 * torch.randn(layer.log_gamma.shape, generator=generator))
            layer.beta.data.copy_(torch.randn(layer.beta.shape, generator=generator))


# ----------------------------------------------------------------------------------------------- the flow


def test_log_joint_is_the_change_of_variables_density():
    """log p(x, k) = log N(u; mu_k, I) + log|det du/dx|, with the Jacobian taken numerically by autograd."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    flow = FlowGMM(dim=4, num_clusters=5, hidden=7, centre_std=0.5, generator=generator).double()
    randomise_batch_norm(flow, generator)
    flow.standardise_inputs(torch.randn(20, 4, generator=generator, dtype=torch.float64) * 3 + 1)
    flow.eval()
    x = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    log_joint = flow.log_joint(x)
    for i in range(len(x)):
        jacobian = torch.autograd.functional.jacobian(lambda v: flow.latent(v[None])[0], x[i])
        u = flow.latent(x[i][None])[0]
        for k in range(flow.num_clusters):
            gaussian = torch.distributions.MultivariateNormal(flow.means[k], torch.eye(4, dtype=torch.float64))
            expected = gaussian.log_prob(u) + torch.linalg.slogdet(jacobian).logabsdet
            assert torch.allclose(log_joint[i, k], expected, atol=1e-9)
    assert torch.allclose(flow.log_prob(x), torch.logsumexp(log_joint, 1) - math.log(5))
    assert torch.allclose(flow.posterior(x).sum(1), torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("order", ["sequential", "reversed"])
def test_made_is_autoregressive_in_its_order(order):
    """du_i/dx_j = 0 unless x_j comes before x_i (or is x_i) in the order; the diagonal gives the log-det."""
    degrees = torch.arange(5) if order == "sequential" else torch.arange(5).flip(0)
    made = MADE(5, 9, degrees).double()
    x = torch.randn(5, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: made(v[None])[0][0], x)
    allowed = degrees[None, :] <= degrees[:, None]  # [i, j]: x_j may influence u_i
    assert torch.all(jacobian[~allowed] == 0)
    assert torch.all(jacobian.diagonal() > 0)
    assert torch.allclose(made(x[None])[1][0].sum(), torch.linalg.slogdet(jacobian).logabsdet)


def test_batch_norm_uses_batch_statistics_in_training_and_running_ones_in_eval():
    layer = FlowBatchNorm(3)
    x = torch.randn(50, 3) * 4 + 2
    y, _ = layer(x)
    assert torch.allclose(y.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(layer.running_mean, 0.1 * x.mean(0))  # momentum 0.9 from zero
    layer.eval()
    _, log_det = layer(x)
    assert torch.allclose(log_det[0], -0.5 * torch.log(layer.running_var + 1e-5))


# --------------------------------------------------------------------------------------- the objective


def test_reverse_frequency_weights_and_pair_sampler():
    counts = torch.tensor([100, 10, 0, 1])
    weights = reverse_frequency_weights(counts, q=2)
    raw = torch.tensor([1.0, 100.0, 0.0, 10000.0])
    assert torch.allclose(weights, raw / raw.sum())

    labels = torch.tensor([0] * 90 + [1] * 9 + [3] * 1)
    positives, negatives = PairSampler(labels).sample(torch.Generator().manual_seed(0))
    assert len(positives) == len(negatives) == 100
    assert torch.all(labels[positives] != labels[negatives])
    share = torch.bincount(labels[positives], minlength=4).float() / 100
    assert share[2] == 0 and torch.all((share[[0, 1, 3]] - 1 / 3).abs() < 0.15)  # classes, not samples


def test_balance_term_is_a_bias_corrected_ema_kl_to_uniform():
    balance = PosteriorBalance(4, momentum=0.7)
    uniform = torch.full((4,), 0.25)
    assert abs(float(balance(uniform))) < 1e-6  # bias correction: the first step is the batch itself
    peaked = torch.tensor([0.7, 0.1, 0.1, 0.1], requires_grad=True)
    value = balance(peaked)
    average = (0.7 * 0.3 * uniform + 0.3 * peaked.detach()) / (1 - 0.7 ** 2)
    assert torch.allclose(value, (average * average.log()).sum() + math.log(4))
    value.backward()
    assert peaked.grad is not None and balance.average.requires_grad is False


def test_pure_cluster_count():
    clusters = torch.tensor([0] * 12 + [1] * 12 + [2] * 5 + [3] * 20)
    labels = torch.tensor([0] * 12 + [0] * 8 + [1] * 4 + [2] * 5 + [0] * 15 + [1] * 5)
    stats = cluster_statistics(clusters, labels, num_clusters=5, num_classes=3, min_purity=0.7, min_size=10)
    # cluster 0: pure, 12; cluster 1: 8/12 = 0.67 impure; cluster 2: too small; cluster 3: 0.75 pure
    assert stats == {"pure_clusters": 2, "largest_cluster": 20, "used_clusters": 4}


def blobs(counts, per_class_eval: int, dim: int = 6, seed: int = 0, scale: float = 6.0):
    """Gaussian blobs (unit variance), one per class around known centres; long-tailed training counts."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(counts), dim, generator=generator) * scale

    def draw(sizes):
        labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
        return centres[labels] + torch.randn(len(labels), dim, generator=generator), labels

    features = {}
    for split, sizes in (("train", counts), ("val", [per_class_eval] * len(counts)),
                         ("test", [per_class_eval] * len(counts))):
        features[f"{split}_features"], features[f"{split}_labels"] = draw(sizes)
    return features, centres


def ce_linear(features: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> nn.Linear:
    """A stand-in for the base run's classifier: plain CE on the long-tailed features (biased to the head)."""
    torch.manual_seed(0)
    linear = nn.Linear(features.shape[1], int(labels.max()) + 1)
    optimizer = torch.optim.SGD(linear.parameters(), lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(linear(features), labels).backward()
        optimizer.step()
    return linear.requires_grad_(False)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def test_flow_selection_keeps_the_epoch_with_most_pure_clusters():
    features, _ = blobs([200, 100, 50, 25], 5)
    settings = FlowFitSettings(epochs=4, batch_size=64, lr=0.05, min_size=5)
    torch.manual_seed(0)
    flow = FlowGMM(6, num_clusters=8, generator=torch.Generator().manual_seed(0))
    record = fit_flow(flow, features["train_features"], features["train_labels"], settings, log=lambda _: None)
    counts = [entry["pure_clusters"] for entry in record["history"]]
    assert record["history"][record["selected_epoch"] - 1]["pure_clusters"] == max(counts)
    assert record["selected_epoch"] == counts.index(max(counts)) + 1
    # the selected weights are the ones left in the flow
    from training.methods.flow_training import score
    stats = cluster_statistics(score(flow, features["train_features"])[1], features["train_labels"], 8, 4,
                               min_size=5)
    assert stats["pure_clusters"] == max(counts)

    limited = fit_flow(FlowGMM(6, num_clusters=8), features["train_features"], features["train_labels"],
                       dataclasses.replace(settings, epochs=2, max_cluster_size=1), log=lambda _: None)
    assert limited["selected_epoch"] == 2 and "last epoch kept" in limited["selection"]


# ------------------------------------------------------------------------------------------------ routing


def test_quantile_threshold_claims_the_top_share_and_routes_test_samples_alike():
    log_prob = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 50
    threshold = quantile_threshold(log_prob, 0.3)
    claimed = route(log_prob, torch.ones(1000, dtype=torch.bool), threshold)
    assert int(claimed.sum()) == 300
    assert log_prob[claimed].min() >= log_prob[~claimed].max()
    open_mask = torch.rand(1000, generator=torch.Generator().manual_seed(1)) < 0.5
    test_claims = route(log_prob, open_mask, threshold)
    assert torch.equal(test_claims, open_mask & (log_prob >= threshold))


class TinyBackbone(nn.Module):
    """A few-parameter stand-in with the model interface DLSA relies on."""

    def __init__(self, num_classes: int = 3, dim: int = 6):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 3, padding=1)
        self.num_features, self.fc = dim, nn.Linear(dim, num_classes)
        self.preprocessing, self.model_name = dataclasses.replace(CIFAR_PREPROCESSING), "tiny"

    def forward_features(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3)) * 5

    def forward(self, x):
        return self.fc(self.forward_features(x))


def random_dlsa_model(depth: int, latent_z: bool, num_classes: int = 3, num_clusters: int = 6) -> DlsaModel:
    """Random weights and priors; every stage's threshold at the median log p of random images, so that
    every stage and the regular classifier get some of them."""
    torch.manual_seed(0)
    options = DlsaOptions(max_depth=depth, num_clusters=num_clusters, latent_z=latent_z, centre_std=1.0)
    model = DlsaModel(TinyBackbone(num_classes), num_classes, options).eval()
    features = model.backbone.forward_features(torch.randn(64, 3, 32, 32))
    with torch.no_grad():
        for stage in model.stages:
            randomise_batch_norm(stage.flow, torch.Generator().manual_seed(len(stage.cluster_priors)))
            stage.cluster_priors.copy_(torch.softmax(torch.randn(num_clusters, num_classes) * 3, dim=1))
            stage.threshold.fill_(stage.flow.log_prob(features).median())
    return model


@pytest.mark.parametrize("latent_z", [False, True])
def test_model_cascade_matches_a_per_sample_loop(latent_z):
    model = random_dlsa_model(depth=3, latent_z=latent_z)
    features = model.backbone.forward_features(torch.randn(40, 3, 32, 32))
    with torch.no_grad():
        logits = model.head(features)
        claimed_by = []
        for x in features:
            x = x[None]
            for depth, stage in enumerate(model.stages):
                log_prob = stage.flow.log_prob(x)
                if log_prob >= stage.threshold:
                    cluster = stage.flow.log_joint(x).argmax(1)
                    z = stage.flow.latent(x) if latent_z else x
                    expected = stage.classifier(x, torch.cat([z, stage.cluster_priors[cluster]], 1))
                    break
            else:
                depth = len(model.stages)
                z = model.stages[-1].flow.latent(x) if latent_z else x
                expected = model.regular(x, z)
            claimed_by.append(depth)
            assert torch.allclose(logits[len(claimed_by) - 1], expected[0], atol=1e-5)
    assert set(claimed_by) == {0, 1, 2, 3}  # every stage and the regular classifier took some


def test_routed_model_exports_to_onnx_with_parity(tmp_path):
    from inference.card import ModelCard

    model = random_dlsa_model(depth=2, latent_z=True)
    card = ModelCard(class_names=["a", "b", "c"], class_counts=[30, 10, 3], class_groups=["many", "medium", "few"],
                     group_rule={"rule": "rank", "head_fraction": 0.3, "tail_fraction": 0.3},
                     preprocessing=model.preprocessing, method="dlsa")
    real = torch.randn(32, 3, 32, 32)
    differences = export_onnx(model, model.preprocessing, card, tmp_path / "dlsa.onnx", real_images=real)
    assert max(differences.values()) <= 1e-4


# ------------------------------------------------------------------------------------- whole pipeline


@pytest.mark.parametrize("feature_norm, latent_z", [(False, False), (True, True)])
def test_pipeline_on_synthetic_clusters(tmp_path, feature_norm, latent_z):
    """Class blobs with long-tailed counts on top of a CE classifier: each stage claims its share, the fitted
    model is near perfect and no worse than the base classifier, and a second call resumes from the saved
    pieces with identical results."""
    counts = [240, 120, 60, 30, 15]
    features, _ = blobs(counts, 20, scale=2.0)
    options = DlsaOptions(max_depth=2, num_clusters=10, centre_std=0.05, flow_epochs=3, flow_batch_size=128,
                          flow_lr=0.02, min_size=5, classifier_epochs=20, classifier_lr=0.05, eval_every=5,
                          feature_norm=feature_norm, latent_z=latent_z)
    linear = ce_linear(features["train_features"], features["train_labels"])
    base_accuracy = accuracy(linear(features["test_features"]), features["test_labels"])
    torch.manual_seed(0)
    model = DlsaModel(TinyBackbone(5, dim=6), 5, options)
    pieces = dlsa_fit.fit_pieces(model, features, options, seed=0, output_dir=tmp_path, linear=linear)
    assert [name for name, *_ in pieces] == ["stage1", "stage2", "regular"]
    claimed = [record["claimed"]["train"] for *_, record in pieces]
    assert claimed[0] == 140 and claimed[1] == 98 and sum(claimed) == sum(counts)  # 30% of 465, then of 325
    model.eval()
    with torch.no_grad():
        dlsa_accuracy = accuracy(model.head(features["test_features"]), features["test_labels"])
    assert dlsa_accuracy >= max(base_accuracy, 0.95)
    for _, _, _, record in pieces[:2]:
        flow_history = record["flow"]["history"]
        assert record["flow"]["selected_epoch"] == 1 + max(range(len(flow_history)),
                                                           key=lambda i: (flow_history[i]["pure_clusters"], -i))
    prior = model.stages[0].cluster_priors
    assert torch.allclose(prior.sum(1)[prior.sum(1) > 0], torch.ones(1))

    fresh = DlsaModel(TinyBackbone(5, dim=6), 5, options)
    dlsa_fit.fit_pieces(fresh, features, options, seed=0, output_dir=tmp_path, linear=linear)  # all restored
    for key, value in model.state_dict().items():
        assert key.startswith("backbone.") or torch.equal(value, fresh.state_dict()[key]), key


def test_depth_zero_is_the_plain_classifier_retrained_on_the_features(tmp_path):
    """max_depth 0: no flow, the regular classifier on every sample with balanced softmax on the full
    counts (the baseline DLSA is compared with); it routes everything to that classifier."""
    counts = [240, 120, 60, 30, 15]
    features, _ = blobs(counts, 20, scale=2.0)
    options = DlsaOptions(max_depth=0, classifier_epochs=10, classifier_lr=0.05, eval_every=5)
    model = DlsaModel(TinyBackbone(5, dim=6), 5, options)
    pieces = dlsa_fit.fit_pieces(model, features, options, seed=0, output_dir=tmp_path)
    assert [name for name, *_ in pieces] == ["regular"] and pieces[0][3]["claimed"]["train"] == sum(counts)
    model.eval()
    with torch.no_grad():
        expected = model.regular(features["test_features"], features["test_features"])
        assert torch.equal(model.head(features["test_features"]), expected)
    with pytest.raises(ConfigError, match="latent_z needs at least one stage"):
        DlsaOptions(max_depth=0, latent_z=True)


# ------------------------------------------------------------------------------------------------- CLI


def dlsa_overrides(tiny_config_overrides, base) -> list[str]:
    data = [o for o in tiny_config_overrides if o.startswith("data.") or o.startswith("run.")]
    return data + [f"method_options.base_checkpoint={base}", "method_options.max_depth=2",
                   "method_options.num_clusters=16", "method_options.flow_epochs=2",
                   "method_options.flow_batch_size=64", "method_options.flow_lr=0.01", "method_options.min_size=2",
                   "method_options.classifier_epochs=4", "method_options.eval_every=2",
                   "run.threads=1"]


def test_train_resume_evaluate_export(tmp_path, tiny_config_overrides, monkeypatch, capsys):
    """The CLI on tiny data: a CE base, its features, DLSA killed in stage 2 and resumed (identical to a
    straight run), then evaluate and export of the result like any other run."""
    base = tmp_path / "base"
    trainer.train(load_config(CE_CONFIG, tiny_config_overrides + ["optim.epochs=1", "optim.lr=0.01"]), base)
    assert cli(["extract-features", "--checkpoint", str(base), "--output", str(tmp_path / "f.safetensors")]) == 0
    tensors, metadata = load_features(tmp_path / "f.safetensors")
    assert tensors["train_features"].shape == (len(tensors["train_labels"]), 64)
    assert {"val_features", "test_features"} <= set(tensors) and metadata["save_id"]

    overrides = dlsa_overrides(tiny_config_overrides, base)
    sets = [arg for override in overrides for arg in ("--set", override)]
    straight, run = tmp_path / "straight", tmp_path / "resumed"
    assert cli(["train", "--config", DLSA_CONFIG, *sets, "--output-dir", str(straight)]) == 0

    real_fit, calls = dlsa_fit.fit_flow, []

    def killed_in_stage_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(dlsa_fit, "fit_flow", killed_in_stage_two)
    assert cli(["train", "--config", DLSA_CONFIG, *sets, "--output-dir", str(run)]) == 130
    monkeypatch.setattr(dlsa_fit, "fit_flow", real_fit)
    assert (run / "stage1.json").exists() and not (run / "stage2.json").exists()
    assert cli(["train", "--config", DLSA_CONFIG, *sets, "--output-dir", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli(["train", "--config", DLSA_CONFIG, *sets, "--output-dir", str(run), "--resume"]) == 0
    assert "stage1: restored" in capsys.readouterr().out
    assert (straight / "summary.json").read_text() == (run / "summary.json").read_text()
    for name in ("best", "last"):
        a, b = load_checkpoint(straight, name)[0], load_checkpoint(run, name)[0]
        assert a.keys() == b.keys() and [key for key in a if not torch.equal(a[key], b[key])] == [], name

    info = json.loads((run / "best.json").read_text())
    assert info["method"] == "dlsa" and [p["piece"] for p in info["dlsa"]] == ["stage1", "stage2", "regular"]
    assert {"last_epoch", "val_selected", "test_oracle_best"} <= set(info["metrics"])
    assert info["metrics"]["val_selected"]["epoch"] == info["epoch"]
    result = evaluate_checkpoint(run)  # images → backbone → routed head, as the app will run it
    assert abs(result["overall"] - info["metrics"]["val_selected"]["test"]["overall"]) < 1e-6
    differences = export_checkpoint(run, tmp_path / "dlsa.onnx")  # raises unless ONNX Runtime matches torch
    assert set(differences) == {"random batch 1", "random batch 5", "real images"}
    from inference.classifier import OnnxClassifier  # what the app and the HTTP service run

    served = OnnxClassifier(tmp_path / "dlsa.onnx")
    assert served.card.method == "dlsa" and served.card.checkpoint["which"] == "val-selected"
    image = tmp_path / "red.png"
    Image.fromarray(make_images(np.array([0]))[0]).save(image)
    assert len(served.classify_files([image])[0].scores) == 10

    with pytest.raises(ConfigError, match="model.name"):
        trainer.train(load_config(DLSA_CONFIG, overrides + ["model.name=resnet32_wide"]), tmp_path / "wrong")


def test_dlsa_options_are_checked_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="llh_proportion"):
        trainer.train(load_config(DLSA_CONFIG, ["method_options.llh_proportion=1.5"]), tmp_path / "run")
    with pytest.raises(ConfigError, match="did you mean 'method_options.flow_epochs'"):
        trainer.train(load_config(DLSA_CONFIG, ["method_options.flow_epoch=3"]), tmp_path / "run")
    with pytest.raises(ConfigError, match="base_checkpoint"):
        trainer.train(load_config(DLSA_CONFIG, ["method_options.base_checkpoint=''"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()
