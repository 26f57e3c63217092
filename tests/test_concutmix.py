"""ConCutMix: the formulas pinned on hand-computed cases and a slow reference, the data and model pieces,
and a training step."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_images, train_interrupted_and_resumed

from models import create_model
from training.config import ConfigError, load_config
from training.contrastive import balanced_contrastive_loss
from training.data.lt_data import ArrayDataset
from training.methods.concutmix import (
    BackgroundForegroundDataset,
    BCLModel,
    ConCutMixOptions,
    NormedLinear,
    normalised_rectification_weight,
    rectification_weight,
    rectified_label,
    semantic_label,
)
from training.mixing import cutmix_box, paste_box
from training.registry import build_method

# ------------------------------------------------------------------------------ rectified label and ρ


def test_semantic_label_is_normalised_inverse_distance_over_the_top_k():
    embedding = torch.tensor([[0.0, 0.0]])
    centres = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-4.0, 0.0], [0.0, -0.5]])  # distances 1, 2, 4, 0.5
    # 1/d = 1, 0.5, 0.25, 2; top-3 keeps 2, 1, 0.5 (sum 3.5)
    expected = torch.tensor([[1 / 3.5, 0.5 / 3.5, 0.0, 2 / 3.5]])
    assert torch.allclose(semantic_label(embedding, centres, topk=3), expected)
    assert torch.allclose(semantic_label(embedding, centres, topk=1), torch.tensor([[0.0, 0.0, 0.0, 1.0]]))


def test_semantic_label_carries_no_gradient():
    embedding = torch.randn(3, 4, requires_grad=True)
    centres = torch.randn(5, 4, requires_grad=True)
    assert not semantic_label(embedding, centres, topk=2).requires_grad


def test_rho_is_omega_times_log_of_area_weighted_count_over_sum_of_log_counts():
    counts = torch.tensor([100.0, 10.0, 1.0])
    area = torch.tensor([[0.75, 0.25, 0.0], [0.0, 0.0, 1.0]])
    omega = 2 / 255
    sum_log = math.log(100) + math.log(10) + math.log(1)
    expected = [omega * math.log(0.75 * 100 + 0.25 * 10) / sum_log, 0.0]  # log(1 image) = 0: no rectification
    assert torch.allclose(rectification_weight(area, counts, omega).squeeze(1), torch.tensor(expected))


def test_rectified_label_mixes_semantic_and_area_labels_by_rho():
    counts = torch.tensor([400.0, 20.0])
    area = torch.tensor([[0.6, 0.4]])
    semantic = torch.tensor([[0.2, 0.8]])
    rho = 0.5 * math.log(0.6 * 400 + 0.4 * 20) / (math.log(400) + math.log(20))
    expected = torch.tensor([[rho * 0.2 + (1 - rho) * 0.6, rho * 0.8 + (1 - rho) * 0.4]])
    label = rectified_label(area, semantic, counts, omega=0.5)
    assert torch.allclose(label, expected)
    assert torch.allclose(label.sum(dim=1), torch.ones(1))


def test_rho_is_tiny_with_the_released_cifar10_omega():
    """docs/methods.md §3.6: with ω = 2/255 on CIFAR-10-LT IF 100, ρ stays between about 4.9e-4 and 1.1e-3."""
    counts = torch.tensor([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], dtype=torch.float64)
    rho = rectification_weight(torch.eye(10, dtype=torch.float64), counts, 2 / 255).squeeze(1)
    assert 4.5e-4 < rho.min() < 5.5e-4 and 1.0e-3 < rho.max() < 1.2e-3


def test_normalised_rho_spans_zero_to_one_between_the_rarest_and_the_commonest_class():
    counts = torch.tensor([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], dtype=torch.float64)
    rho = normalised_rectification_weight(torch.eye(10, dtype=torch.float64), counts).squeeze(1)
    assert rho[0] == 1 and rho[-1] == 0 and bool((rho[:-1] > rho[1:]).all())
    half = torch.zeros(1, 10, dtype=torch.float64)
    half[0, 0] = half[0, 9] = 0.5  # area-weighted count 2525: log-scaled, most of the way to the head
    expected = (math.log(2525) - math.log(50)) / (math.log(5000) - math.log(50))
    assert torch.allclose(normalised_rectification_weight(half, counts).squeeze(1), torch.tensor([expected], dtype=torch.float64))
    assert normalised_rectification_weight(half, torch.full((10,), 7.0, dtype=torch.float64)).abs().max() == 0


def test_rectification_none_keeps_the_area_label_and_normalised_moves_it():
    counts = torch.tensor([400.0, 20.0])
    area, semantic = torch.tensor([[0.6, 0.4]]), torch.tensor([[0.2, 0.8]])
    assert torch.equal(rectified_label(area, semantic, counts, 2 / 255, "none"), area)
    moved = rectified_label(area, semantic, counts, 2 / 255, "normalised")
    released = rectified_label(area, semantic, counts, 2 / 255, "released")
    assert (moved - area).abs().max() > 0.1 > 1e-2 > (released - area).abs().max()
    assert torch.allclose(moved.sum(dim=1), torch.ones(1))


def test_an_unknown_rectification_is_a_config_error():
    with pytest.raises(ConfigError, match="rectification must be one of released, normalised, none"):
        ConCutMixOptions(rectification="paper")


# --------------------------------------------------------------------------------------------- BCL


def slow_bcl(embeddings, labels, centres, temperature):
    """docs/methods.md §3.4 step 9, one anchor and one term at a time."""
    items = list(embeddings) + list(centres)
    item_labels = labels.tolist() + list(range(len(centres)))
    class_sizes = {c: item_labels.count(c) for c in set(item_labels)}
    losses = []
    for i, anchor in enumerate(embeddings):
        y = item_labels[i]
        denominator = 0.0
        for c, size in class_sizes.items():
            terms = [math.exp(float(anchor @ items[j]) / temperature)
                     for j in range(len(items)) if j != i and item_labels[j] == c]
            denominator += sum(terms) / (size - (1 if c == y else 0))
        positives = [j for j in range(len(items)) if j != i and item_labels[j] == y]
        losses.append(-sum(float(anchor @ items[p]) / temperature - math.log(denominator)
                           for p in positives) / len(positives))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bcl_matches_a_direct_slow_implementation(seed):
    generator = torch.Generator().manual_seed(seed)
    batch, num_classes = 6, 4
    labels = torch.randint(num_classes, (batch,), generator=generator).repeat(2)  # two views per image
    embeddings = F.normalize(torch.randn(2 * batch, 8, generator=generator, dtype=torch.float64), dim=1)
    centres = F.normalize(torch.randn(num_classes, 8, generator=generator, dtype=torch.float64), dim=1)
    fast = balanced_contrastive_loss(embeddings, labels, centres, temperature=0.1)
    slow = slow_bcl(embeddings.double(), labels, centres.double(), temperature=0.1)
    assert fast.item() == pytest.approx(slow, rel=1e-5)


def test_bcl_on_a_hand_computed_case():
    """Two anchors of class 0 (the two views of one image) and centres for classes 0 and 1.
    Items: a=[1,0], b=[0,1], c0=[1,0], c1=[0,1]; T=1. Class sizes: class 0 has a, b, c0 (3); class 1 has c1.
    Anchor a: positives b (a·b=0) and c0 (1). Denominator: class 0 (b, c0) / (3−1) + class 1 (c1) / 1
    = (e^0 + e^1)/2 + e^0. Anchor b: positives a (0), c0 (0); denominator (e^0 + e^0)/2 + e^1."""
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    e = math.e
    loss_a = -((0 - math.log((1 + e) / 2 + 1)) + (1 - math.log((1 + e) / 2 + 1))) / 2
    loss_b = -((0 - math.log(1 + e)) + (0 - math.log(1 + e))) / 2
    value = balanced_contrastive_loss(embeddings, labels, centres, temperature=1.0).item()
    assert value == pytest.approx((loss_a + loss_b) / 2, rel=1e-9)


# -------------------------------------------------------------------------------------------- CutMix


def test_cutmix_box_covers_about_one_minus_lambda_and_lambda_is_recomputed_from_the_clipped_box():
    torch.manual_seed(0)
    background, foreground = torch.zeros(2, 3, 32, 32), torch.ones(2, 3, 32, 32)
    for lam in (0.1, 0.5, 0.9):
        for _ in range(20):
            box = cutmix_box(32, 32, lam)
            top, bottom, left, right = box
            assert 0 <= top <= bottom <= 32 and 0 <= left <= right <= 32
            assert bottom - top <= int(32 * math.sqrt(1 - lam)) and right - left <= int(32 * math.sqrt(1 - lam))
            mixed, kept = paste_box(background, foreground, box)
            assert kept == pytest.approx(1 - mixed[0, 0].mean().item())  # the share of background pixels left
            assert torch.equal(background, torch.zeros(2, 3, 32, 32))  # the input is not modified


# ------------------------------------------------------------------------------------ data and model


def test_foreground_sampler_is_class_balanced_while_background_follows_the_data():
    labels = np.repeat(np.arange(3), [80, 15, 5])
    dataset = BackgroundForegroundDataset(ArrayDataset(make_images(labels), labels), views=(lambda x: x,) * 3,
                                          foreground_view=lambda x: x, sampler="balance")
    torch.manual_seed(0)
    foreground_classes = [dataset[i % len(dataset)][1][1] for i in range(1500)]
    shares = np.bincount(foreground_classes, minlength=3) / 1500
    assert np.allclose(shares, 1 / 3, atol=0.05)
    (view1, _, _, foreground), (label, _) = dataset[90]
    assert label == 1 and view1.shape == (3, 32, 32) and foreground.dtype == torch.uint8
    reverse = BackgroundForegroundDataset(ArrayDataset(make_images(labels), labels), (lambda x: x,) * 3,
                                          lambda x: x, sampler="reverse")
    assert np.allclose(reverse.class_probabilities.numpy(), np.array([1, 80 / 15, 16]) / (1 + 80 / 15 + 16))


@pytest.mark.parametrize("normed", [False, True])
def test_bcl_model_has_one_centre_per_class_and_deploys_the_backbone(normed):
    options = ConCutMixOptions(feat_dim=16, hidden_dim=32, normed_classifier=normed)
    model = BCLModel(create_model("resnet32", 7), 7, options).eval()
    images = torch.randn(3, 3, 32, 32)
    outputs = model(images)
    assert outputs["logits"].shape == (3, 7) and outputs["embedding"].shape == (3, 16)
    assert outputs["centres"].shape == (7, 16)
    assert torch.allclose(model.backbone(images), outputs["logits"])
    if normed:
        assert isinstance(model.backbone.fc, NormedLinear)
        assert outputs["logits"].abs().max() <= 30.0 + 1e-4


def test_method_options_are_type_checked():
    """...when the config is loaded, into the method's typed options, before any data is read."""
    with pytest.raises(ConfigError, match="topk"):
        load_config("configs/cifar10_lt/concutmix.yaml", ["method_options.topk=three"])
    with pytest.raises(ConfigError, match="did you mean 'method_options.temperature'"):
        load_config("configs/cifar10_lt/concutmix.yaml", ["method_options.tmperature=0.2"])
    with pytest.raises(ConfigError, match="foreground_sampler"):
        load_config("configs/cifar10_lt/concutmix.yaml", ["method_options.foreground_sampler=random"])
    options = load_config("configs/cifar10_lt/concutmix.yaml", ["method_options.topk=5"]).method_options
    assert type(options).__name__ == "ConCutMixOptions" and options.topk == 5
    assert build_method(load_config("configs/cifar10_lt/concutmix.yaml"), [50, 20, 5]).options.topk == 3


def _tiny_batch(num_classes=3, batch=8):
    torch.manual_seed(0)
    views = [torch.randn(batch, 3, 32, 32) for _ in range(4)]
    labels = torch.randint(num_classes, (batch,))
    return (*views,), (labels, torch.randint(num_classes, (batch,)))


@pytest.mark.parametrize("epoch", [0, 5])
def test_training_step_takes_a_finite_loss_and_reaches_every_part_of_the_model(epoch):
    config = load_config("configs/cifar10_lt/concutmix.yaml",
                         ["method_options.cutmix_prob=1.0", "method_options.label_warmup_epochs=2",
                          "method_options.hidden_dim=32", "method_options.feat_dim=16"])
    method = build_method(config, [50, 20, 5])
    model = method.build_model()
    loss = method.training_loss(model, _tiny_batch(), epoch)
    assert torch.isfinite(loss)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_cifar_and_imagenet_configs_match_the_released_recipe():
    cifar10 = load_config("configs/cifar10_lt/concutmix.yaml")
    assert (cifar10.method_options.topk, cifar10.method_options.omega, cifar10.loss.tau) == (3, 2 / 255, 0.85)
    assert (cifar10.data.batch_size, cifar10.optim.lr, cifar10.optim.weight_decay) == (256, 0.15, 5e-4)
    cifar100 = load_config("configs/cifar100_lt/concutmix.yaml")
    assert (cifar100.method_options.topk, cifar100.method_options.omega, cifar100.loss.tau) == (30, 20 / 255, 0.9)
    imagenet = load_config("configs/imagenet_lt/concutmix.yaml")
    assert imagenet.method_options.normed_classifier and imagenet.method_options.feat_dim == 1024
    assert (imagenet.method_options.temperature, imagenet.optim.schedule, imagenet.optim.epochs) == (0.07, "cosine", 90)


def test_resume_reaches_the_same_weights(tmp_path, tiny_config_overrides, monkeypatch):
    """CutMix draws, foreground choices and the three views all replay after a kill and a resume."""
    from training.checkpoint import load_checkpoint

    overrides = tiny_config_overrides + ["optim.epochs=3", "method_options.label_warmup_epochs=1",
                                         "method_options.hidden_dim=32", "method_options.feat_dim=16"]
    straight, resumed = train_interrupted_and_resumed("configs/cifar10_lt/concutmix.yaml", overrides, tmp_path,
                                                      monkeypatch)
    straight, resumed = load_checkpoint(straight, "last")[0], load_checkpoint(resumed, "last")[0]
    assert straight.keys() == resumed.keys() and any(key.startswith("model.centre_head") for key in straight)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
