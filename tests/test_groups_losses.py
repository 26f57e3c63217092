import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.config import GroupConfig
from training.groups import groups_by_count, groups_by_rank, shot_accuracy
from training.losses import BalancedSoftmaxLoss, LogitAdjustedLoss, build_loss, soft_cross_entropy

CIFAR10_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_count_rule_boundaries():
    assert groups_by_count([101, 100, 20, 19]) == ["many", "medium", "medium", "few"]
    assert groups_by_count(CIFAR10_IF100).count("few") == 0  # why the rank rule exists
    assert groups_by_count([50, 10], many_above=40, few_below=11) == ["many", "few"]


def test_rank_rule_is_3_4_3_on_cifar10():
    groups = groups_by_rank(CIFAR10_IF100)
    assert groups == ["many"] * 3 + ["medium"] * 4 + ["few"] * 3
    shuffled = [50, 5000, 83, 2997]
    assert groups_by_rank(shuffled, 0.25, 0.25) == ["few", "many", "medium", "medium"]


def test_shot_accuracy_is_the_mean_of_class_accuracies():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    predictions = np.array([0, 0, 1, 0, 2, 0, 0, 0])
    result = shot_accuracy(predictions, labels, [200, 50, 5], GroupConfig())
    assert result["overall"] == pytest.approx(100 * 4 / 8)
    assert result["per_class"] == [100.0, 50.0, 25.0]
    assert result["groups"]["count"] == {"many": 100.0, "medium": 50.0, "few": 25.0}
    assert result["groups"]["rank"]["many"] == 100.0


def test_group_without_classes_is_none():
    result = shot_accuracy(np.array([0, 1]), np.array([0, 1]), [500, 400], GroupConfig())
    assert result["groups"]["count"]["few"] is None


def test_logit_adjusted_matches_the_formula():
    torch.manual_seed(0)
    logits, target, counts = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]), [100, 10, 1]
    prior = torch.tensor(counts, dtype=torch.float) / sum(counts)
    expected = F.cross_entropy(logits + 0.7 * prior.log(), target)
    assert LogitAdjustedLoss(counts, tau=0.7)(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    assert LogitAdjustedLoss(counts, tau=0.0)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target).item(), rel=1e-6)


def test_balanced_softmax_matches_the_formula():
    torch.manual_seed(1)
    logits, target, counts = torch.randn(4, 3), torch.tensor([2, 1, 0, 2]), [300, 30, 3]
    expected = F.cross_entropy(logits + torch.log(torch.tensor(counts, dtype=torch.float) + 1e-6), target)
    assert BalancedSoftmaxLoss(counts)(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_soft_labels_equal_hard_labels_when_one_hot():
    logits, target = torch.randn(5, 4), torch.tensor([0, 3, 1, 2, 3])
    assert soft_cross_entropy(logits, F.one_hot(target, 4).float()).item() == pytest.approx(
        soft_cross_entropy(logits, target).item(), rel=1e-6)


def test_build_loss_rejects_unknown():
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("focal", [1, 2])
