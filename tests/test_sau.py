"""SAU: the label check and SupCon pinned against direct slow loops, the prototypes, the real + synthetic
data, a training step, and the CLI path (train → evaluate → export → ONNX classifier → resume)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CLASS_NAMES, make_images, train_interrupted_and_resumed, write_cifar_like_npz, write_synthetic_set
from PIL import Image

from models import create_model
from models.registry import CIFAR_PREPROCESSING, IMAGENET_PREPROCESSING
from training.config import ConfigError, load_config
from training.contrastive import supervised_contrastive_loss
from training.data.lt_data import ArrayDataset, DatasetBundle
from training.data.transforms import Cutout, MultipleViews, eval_transform
from training.methods.sau import (
    RealSyntheticDataset,
    class_prototypes,
    clean_synthetic,
    cutmix,
    noisy_labels,
    real_and_synthetic,
    sau_views,
    synthetic_aware_loss,
)
from training.mixing import sample_beta
from training.registry import build_method

CONFIG = "configs/cifar10_lt/sau.yaml"
TINY_HEAD = ["method_options.hidden_dim=32", "method_options.feat_dim=16"]


# --------------------------------------------------------------------------- slow reference implementations


def cosine(a, b) -> float:
    a, b = [float(x) for x in a], [float(x) for x in b]
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def slow_contrastive_labels(synthetic_views, labels, reference_views, reference_labels, strategy):
    """docs/methods.md §1.4 step 6, one sample and one reference at a time: (labels, kept)."""
    result, kept, next_negative = [], [], -1
    for s, label in enumerate(labels.tolist()):
        agree = True
        for queries, references in zip(synthetic_views, reference_views):
            similarities = [cosine(queries[s], r) for r in references]
            agree &= reference_labels[similarities.index(max(similarities))].item() == label
        if agree:
            result.append(label)
            kept.append(True)
        elif strategy == "pos_neg":
            result.append(next_negative)
            kept.append(True)
            next_negative -= 1
        else:
            result.append(-1)
            kept.append(strategy == "neg_only")
    return result, kept


def slow_supcon(items, labels, temperature, anchors=None) -> float:
    """SupCon, one anchor and one term at a time; an empty positive set contributes 0 (divisor 1)."""
    losses = []
    for i in range(len(items)):
        if anchors is not None and not anchors[i]:
            continue
        denominator = sum(math.exp(float(items[i] @ items[a]) / temperature) for a in range(len(items)) if a != i)
        positives = [p for p in range(len(items)) if p != i and labels[p] == labels[i]]
        total = sum(float(items[i] @ items[p]) / temperature - math.log(denominator) for p in positives)
        losses.append(-total / max(len(positives), 1))
    return sum(losses) / len(losses)


def slow_synthetic_aware_loss(z2, z3, labels, is_synthetic, prototypes, strategy, temperature):
    real = [i for i in range(len(labels)) if not is_synthetic[i]]
    synthetic = [i for i in range(len(labels)) if is_synthetic[i]]
    num_classes = prototypes.shape[1]
    reference_views = [[z[i] for i in real] + list(prototypes[v]) for v, z in enumerate((z2, z3))]
    reference_labels = torch.tensor([labels[i].item() for i in real] + list(range(num_classes)))
    synthetic_labels, kept = slow_contrastive_labels(([z2[i] for i in synthetic], [z3[i] for i in synthetic]),
                                                     labels[synthetic], reference_views, reference_labels, strategy)
    view2 = reference_views[0] + [z2[i] for i, keep in zip(synthetic, kept) if keep]
    view3 = reference_views[1] + [z3[i] for i, keep in zip(synthetic, kept) if keep]
    item_labels = reference_labels.tolist() + [y for y, keep in zip(synthetic_labels, kept) if keep]
    items, all_labels = view2 + view3, item_labels * 2
    anchors = [y != -1 for y in all_labels] if strategy == "neg_only" else None
    return slow_supcon(items, all_labels, temperature, anchors)


def random_branch_inputs(seed, batch=10, num_classes=3, dim=6):
    generator = torch.Generator().manual_seed(seed)
    z2 = F.normalize(torch.randn(batch, dim, generator=generator, dtype=torch.float64), dim=1)
    z3 = F.normalize(torch.randn(batch, dim, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.randint(num_classes, (batch,), generator=generator)
    is_synthetic = torch.arange(batch) % 3 != 0  # 4 real, 6 synthetic
    # Means of unit vectors: shorter than 1, as real prototypes are.
    prototypes = 0.7 * F.normalize(torch.randn(2, num_classes, dim, generator=generator, dtype=torch.float64), dim=2)
    return z2, z3, labels, is_synthetic, prototypes


# -------------------------------------------------------------------------------------- label check


@pytest.mark.parametrize("strategy", ["pos_neg", "drop", "neg_only"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_check_matches_a_direct_slow_implementation(strategy, seed):
    z2, z3, labels, is_synthetic, prototypes = random_branch_inputs(seed)
    real = ~is_synthetic
    reference_views = (torch.cat([z2[real], prototypes[0]]), torch.cat([z3[real], prototypes[1]]))
    reference_labels = torch.cat([labels[real], torch.arange(3)])
    synthetic_views = (z2[is_synthetic], z3[is_synthetic])
    clean = clean_synthetic(synthetic_views, labels[is_synthetic], reference_views, reference_labels)
    fast = noisy_labels(labels[is_synthetic], clean, strategy)
    slow, kept = slow_contrastive_labels(synthetic_views, labels[is_synthetic], reference_views, reference_labels,
                                         strategy)
    assert fast.tolist() == slow
    if strategy == "drop":
        assert clean.tolist() == kept


def test_label_check_on_a_hand_made_case():
    """References: a real sample [1, 0] of class 0 and the class-1 prototype [0, 0.5] (short, as a mean is;
    cosine ignores the length). Synthetic samples, views 2 and 3:
      s0 class 0, [0.9, 0.1] in both views: nearest is class 0 in both → clean;
      s1 class 0, [0.1, 0.9] in both: nearest is class 1 → noisy;
      s2 class 1, [0.2, 0.8] in view 2 (class 1) but [0.8, 0.2] in view 3 (class 0) → noisy."""
    references = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    reference_labels = torch.tensor([0, 1])
    view2 = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.2, 0.8]])
    view3 = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2]])
    labels = torch.tensor([0, 0, 1])
    clean = clean_synthetic((view2, view3), labels, (references, references), reference_labels)
    assert clean.tolist() == [True, False, False]
    assert noisy_labels(labels, clean, "pos_neg").tolist() == [0, -1, -2]
    assert noisy_labels(labels, clean, "neg_only").tolist() == [0, -1, -1]
    assert labels.tolist() == [0, 0, 1]  # the input is not modified


# -------------------------------------------------------------------------------------------- SupCon


@pytest.mark.parametrize("strategy", ["pos_neg", "drop", "neg_only"])
@pytest.mark.parametrize("seed", [0, 1])
def test_synthetic_aware_supcon_matches_a_direct_slow_implementation(strategy, seed):
    z2, z3, labels, is_synthetic, prototypes = random_branch_inputs(seed)
    fast = synthetic_aware_loss(z2, z3, labels, is_synthetic, prototypes, strategy, temperature=0.1)
    slow = slow_synthetic_aware_loss(z2, z3, labels, is_synthetic, prototypes, strategy, temperature=0.1)
    assert fast.item() == pytest.approx(slow, rel=1e-9)


def test_the_random_cases_contain_noisy_samples_so_the_strategies_differ():
    z2, z3, labels, is_synthetic, prototypes = random_branch_inputs(0)
    values = {s: synthetic_aware_loss(z2, z3, labels, is_synthetic, prototypes, s, 0.1).item()
              for s in ("pos_neg", "drop", "neg_only")}
    assert len(set(values.values())) == 3


def test_supcon_with_empty_positive_sets_and_masked_anchors():
    generator = torch.Generator().manual_seed(3)
    items = F.normalize(torch.randn(6, 4, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 0, 1, 2, 2, 3])  # items 2 and 5 have no positive: they add 0 but count
    value = supervised_contrastive_loss(items, labels, temperature=0.5).item()
    assert value == pytest.approx(slow_supcon(items, labels.tolist(), 0.5), rel=1e-9)
    anchors = torch.tensor([True, False, True, True, False, True])
    value = supervised_contrastive_loss(items, labels, 0.5, anchors).item()
    assert value == pytest.approx(slow_supcon(items, labels.tolist(), 0.5, anchors.tolist()), rel=1e-9)


def test_supcon_on_a_hand_computed_case():
    """a = [1, 0] and b = [0, 1] of class 0, c = [1, 0] of class 1, T = 1. Anchor a: positive b (a·b = 0),
    denominator e^0 + e^1. Anchor b: positive a (0), denominator e^0 + e^0. Anchor c: no positive → 0."""
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    expected = (-(0 - math.log(1 + math.e)) - (0 - math.log(2)) + 0) / 3
    assert supervised_contrastive_loss(items, torch.tensor([0, 0, 1]), 1.0).item() == pytest.approx(expected)


def test_prototypes_get_no_gradient_and_the_embeddings_do():
    z2, z3, labels, is_synthetic, prototypes = random_branch_inputs(0)
    z2.requires_grad_(True)
    synthetic_aware_loss(z2, z3, labels, is_synthetic, prototypes, "pos_neg", 0.1).backward()
    assert z2.grad is not None and z2.grad.abs().sum() > 0 and not prototypes.requires_grad


# ------------------------------------------------------------------------------------------ prototypes


class PixelEmbedding(torch.nn.Module):
    """A stand-in for SauModel: z = normalise(BatchNorm(the first 8 pixel values)), whose output differs
    between train mode (batch statistics) and eval mode (running statistics)."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(8)
        self.norm.running_mean.fill_(0.2)

    def forward(self, images):
        return {"embedding": F.normalize(self.norm(images.flatten(1)[:, :8]), dim=1)}


def test_prototypes_are_per_class_means_of_the_real_embeddings_in_eval_mode():
    labels = np.array([0, 1, 2, 0, 2, 0, 1])
    model = PixelEmbedding()
    transform = eval_transform(create_model("resnet32", 3).preprocessing)
    dataset = ArrayDataset(make_images(labels), labels, MultipleViews(transform, transform))
    model.train()  # class_prototypes must switch to eval mode (running BatchNorm statistics)
    prototypes = class_prototypes(model, dataset, 3, batch_size=3, num_workers=0, device=torch.device("cpu"))
    assert not model.training and prototypes.shape == (2, 3, 8)
    z = [model(dataset[i][0][0][None])["embedding"][0] for i in range(len(dataset))]
    for c in range(3):
        members = [z[i] for i in range(len(z)) if labels[i] == c]
        expected = sum(members) / len(members)  # plain mean, not re-normalised
        assert torch.allclose(prototypes[0, c], expected, atol=1e-6) and torch.allclose(prototypes[1, c], expected, atol=1e-6)
        assert expected.norm() < 0.999  # the class members differ, so their mean is shorter than 1


# ------------------------------------------------------------------------------------------------ data


def tiny_bundle(real_counts=(6, 3, 1)) -> DatasetBundle:
    labels = np.repeat(np.arange(len(real_counts)), real_counts)
    train = ArrayDataset(make_images(labels, seed=1), labels)
    return DatasetBundle(train=train, val=None, test=train, class_names=CLASS_NAMES[:len(real_counts)], kind="array")


def test_synthetic_images_top_every_class_up_to_the_largest_one(tmp_path):
    bundle = tiny_bundle()
    root = write_synthetic_set(tmp_path / "syn", bundle.class_names, [7, 7, 7], size=48)  # 48px: resized to 32
    images, is_synthetic = real_and_synthetic(bundle, str(root))
    assert np.bincount(images.labels).tolist() == [6, 6, 6] and len(images) == 18
    assert is_synthetic.tolist() == [False] * 10 + [True] * 8
    assert images.images.shape == (18, 32, 32, 3)
    assert np.array_equal(images.images[:10], bundle.train.images)  # the real images first, unchanged
    images, is_synthetic = real_and_synthetic(bundle, str(root), top_up_to=8)
    assert np.bincount(images.labels).tolist() == [8, 8, 8] and is_synthetic.sum() == 2 + 5 + 7


def test_missing_short_or_mismatched_synthetic_sets_are_clear_errors(tmp_path):
    bundle = tiny_bundle()
    with pytest.raises(ConfigError, match="not a synthetic image set"):
        real_and_synthetic(bundle, str(tmp_path / "nowhere"))
    short = write_synthetic_set(tmp_path / "short", bundle.class_names, [0, 3, 4])
    with pytest.raises(ConfigError, match=r"too few synthetic images for: 'blue' \(4 of 5\)"):
        real_and_synthetic(bundle, str(short))
    other = write_synthetic_set(tmp_path / "other", ["cat", "dog", "ship"], [5, 5, 5])
    with pytest.raises(ConfigError, match="was generated for the classes"):
        real_and_synthetic(bundle, str(other))


def test_partners_are_a_permutation_redrawn_each_epoch_and_reproducible(tmp_path):
    bundle = tiny_bundle()
    images, is_synthetic = real_and_synthetic(bundle, str(write_synthetic_set(tmp_path / "s", bundle.class_names,
                                                                              [5, 5, 5])))
    identity = torch.nn.Identity()
    dataset = RealSyntheticDataset(images, is_synthetic, (identity, identity, identity))
    with pytest.raises(RuntimeError, match="shuffle_partners"):
        dataset[0]
    orders = []
    for seed in (7, 8, 7):
        torch.manual_seed(seed)  # what the trainer's seed_epoch does at every epoch start
        dataset.shuffle_partners()
        orders.append(dataset.order.clone())
    assert sorted(orders[0].tolist()) == list(range(18))
    assert torch.equal(orders[0], orders[2]) and not torch.equal(orders[0], orders[1])
    (view1, _, view3, partner), (label, partner_label, synthetic) = dataset[11]
    assert torch.equal(view1, view3) and label == images.labels[11] and synthetic
    assert partner_label == images.labels[int(dataset.order[11])]
    assert torch.equal(partner, torch.from_numpy(images.images[int(dataset.order[11])]).permute(2, 0, 1))


def test_views_follow_the_released_transforms():
    """CIFAR: crop + flip; + AutoAugment + one 16-pixel Cutout square; SimCLR-style. ImageNet-style: the
    strong classification view, then the SimCLR-style view twice (docs/methods.md §1.5)."""
    plain, strong, contrastive = sau_views(CIFAR_PREPROCESSING, "array")
    names = [[type(step).__name__ for step in view.transforms] for view in (plain, strong, contrastive)]
    assert names[0] == ["RandomCrop", "RandomHorizontalFlip", "ToImage", "ToDtype", "Normalize"]
    assert names[1] == ["RandomCrop", "RandomHorizontalFlip", "AutoAugment", "ToImage", "ToDtype", "Cutout", "Normalize"]
    assert "RandomResizedCrop" in names[2] and "GaussianBlur" not in names[2]  # inside a RandomApply
    first, second, third = sau_views(IMAGENET_PREPROCESSING, "files")
    assert "RandAugment" in [type(step).__name__ for step in first.transforms] and second is third

    torch.manual_seed(0)
    for _ in range(20):
        hole = Cutout(16)(torch.ones(3, 32, 32)) == 0
        rows, columns = hole[0].any(dim=1).sum().item(), hole[0].any(dim=0).sum().item()
        assert 8 <= rows <= 16 and 8 <= columns <= 16 and hole[0].sum() == rows * columns  # one square, clipped
        assert torch.equal(hole[0], hole[1])


def test_options_are_checked_before_any_data_is_read():
    for override, message in (("method_options.synthetic_dir=''", "SAU needs method_options.synthetic_dir"),
                              ("method_options.loss_strategy=noisy", "loss_strategy must be one of"),
                              ("method_options.temperature=0", "temperature"),
                              ("method_options.top_up=5", "did you mean 'method_options.top_up_to'"),
                              ("loss.name=logit_adjusted", "loss.name must be ce")):
        with pytest.raises(ConfigError, match=message):
            build_method(load_config(CONFIG, [override]), [50, 20, 5])


# ----------------------------------------------------------------------------------------- training step


def test_cutmix_label_uses_the_sampled_lambda_not_the_box_area():
    images, partners = torch.zeros(4, 3, 32, 32), torch.ones(4, 3, 32, 32)
    targets, partner_targets = torch.eye(3)[[0, 1, 2, 0]], torch.eye(3)[[1, 2, 0, 2]]
    for seed in range(5):
        torch.manual_seed(seed)
        lam = sample_beta(1.0)
        torch.manual_seed(seed)
        mixed, label = cutmix(images, partners, targets, partner_targets, 1.0)
        assert torch.allclose(label, lam * targets + (1 - lam) * partner_targets)
        pasted = mixed[0, 0].mean().item()
        assert 0 <= pasted <= 1 - lam + 0.2  # the box covers about 1 − λ, clipped at the borders


def test_a_step_makes_four_forward_passes_and_reaches_every_parameter():
    method = build_method(load_config(CONFIG, ["model.name=resnet32", *TINY_HEAD]), [50, 20, 5])
    model = method.build_model()
    batch_sizes = []
    model.register_forward_pre_hook(lambda module, args: batch_sizes.append(len(args[0])))
    torch.manual_seed(0)
    views = tuple(torch.randn(6, 3, 32, 32) for _ in range(4))
    batch = views, (torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([2, 2, 1, 0, 0, 1]),
                    torch.tensor([False, True, True, False, True, True]))
    with pytest.raises(RuntimeError, match="start_epoch"):
        method.training_loss(model, batch, 0)
    method.prototypes = F.normalize(torch.randn(2, 3, 16), dim=2)
    loss = method.training_loss(model, batch, 0)
    assert batch_sizes == [6, 6, 6, 6] and torch.isfinite(loss)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_configs_follow_the_released_recipe():
    for path, dataset in (("configs/cifar10_lt/sau.yaml", "cifar10_lt"), ("configs/cifar100_lt/sau.yaml", "cifar100_lt")):
        config = load_config(path)
        options = build_method(config, [100, 10]).options
        assert (config.method, config.data.dataset, config.model.name) == ("sau", dataset, "resnet32_wide")
        assert (config.optim.epochs, config.optim.lr, config.optim.momentum, config.optim.weight_decay) == (200, 0.01, 0.9, 5e-3)
        assert (config.optim.schedule, config.optim.warmup_epochs, config.data.batch_size) == ("cosine", 0, 128)
        assert (options.temperature, options.loss_strategy, options.top_up_to) == (0.1, "pos_neg", 0)
        assert (options.hidden_dim, options.feat_dim, options.mixup_beta, options.cutmix_beta) == (2048, 128, 1.0, 1.0)
        assert options.synthetic_dir == f"synthetic/{dataset}"


# ----------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def tiny_sau_data(tmp_path_factory):
    """4 classes of 20 CIFAR-like images (val 2 each, IF 4: 18, 12, 7, 5 real) and a synthetic set topping
    every class up to 18."""
    work = tmp_path_factory.mktemp("sau_data")
    npz = write_cifar_like_npz(work / "tiny4.npz", train_per_class=20, test_per_class=5, num_classes=4)
    synthetic = write_synthetic_set(work / "synthetic", CLASS_NAMES[:4], [2, 8, 12, 15])
    overrides = [f"data.root={npz}", "data.imbalance_factor=4", "data.val_per_class=2", "data.batch_size=36",
                 "data.num_workers=0", "optim.epochs=2", "optim.lr=0.02", "run.progress=false",
                 "model.name=resnet32", f"method_options.synthetic_dir={synthetic}", *TINY_HEAD]
    return overrides


def test_train_evaluate_export_and_classify_from_the_command_line(tiny_sau_data, tmp_path, capsys):
    from inference.classifier import OnnxClassifier
    from training.__main__ import main as cli

    sets = [arg for override in tiny_sau_data for arg in ("--set", override)]
    run = tmp_path / "run"
    assert cli(["train", "--config", CONFIG, *sets, "--output-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "SAU: 42 real + 30 synthetic training images" in out and "last epoch (epoch 2)" in out
    assert cli(["evaluate", "--checkpoint", str(run)]) == 0
    assert "overall" in capsys.readouterr().out
    assert cli(["export", "--checkpoint", str(run), "--output", str(tmp_path / "sau.onnx")]) == 0
    assert "real images" in capsys.readouterr().out

    classifier = OnnxClassifier(tmp_path / "sau.onnx")
    assert classifier.card.method == "sau" and classifier.card.class_counts == [18, 12, 7, 5]  # real images only
    image = tmp_path / "blue.png"
    Image.fromarray(make_images(np.array([2]), seed=9)[0]).save(image)
    assert len(classifier.classify_files([image])[0].scores) == 4


def test_resume_reaches_the_same_weights(tiny_sau_data, tmp_path, monkeypatch):
    """Prototypes, partner permutations, MixUp / CutMix draws and the views all replay after a kill."""
    from training.checkpoint import load_checkpoint

    straight, resumed = train_interrupted_and_resumed(CONFIG, tiny_sau_data, tmp_path, monkeypatch, die_in_epoch=2)
    straight, resumed = load_checkpoint(straight, "last")[0], load_checkpoint(resumed, "last")[0]
    assert straight.keys() == resumed.keys() and any(key.startswith("model.head") for key in straight)
    assert [key for key in straight if not torch.equal(straight[key], resumed[key])] == []
