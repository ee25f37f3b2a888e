import numpy as np
import pytest

from onnx_dns.codebook import assign, centroid_gradient, kmeans_1d, update_centroids


def brute_lloyd(values: np.ndarray, k: int, iterations: int = 100) -> np.ndarray:
    """Textbook Lloyd's algorithm with a full distance matrix, linear initialisation."""
    x = values.astype(np.float64)
    c = np.linspace(x.min(), x.max(), k)
    for _ in range(iterations):
        codes = np.abs(x[:, None] - c[None, :]).argmin(axis=1)
        new = np.array([x[codes == j].mean() if np.any(codes == j) else c[j] for j in range(k)])
        if np.array_equal(new, c):
            break
        c = new
    return c


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kmeans_matches_textbook_lloyd(bits):
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(-0.1, 0.02, 300), rng.normal(0.08, 0.03, 200)]).astype(np.float32)
    book = kmeans_1d(values, bits)
    np.testing.assert_allclose(np.sort(book.centroids), brute_lloyd(values, 2 ** bits), rtol=1e-5, atol=1e-7)


def test_codes_point_at_the_nearest_centroid_and_quantization_error_shrinks_with_bits():
    rng = np.random.default_rng(1)
    values = rng.laplace(0, 0.05, 5000).astype(np.float32)
    errors = []
    for bits in (2, 4, 6):
        book = kmeans_1d(values, bits)
        distances = np.abs(values[:, None].astype(np.float64) - book.centroids[None, :].astype(np.float64))
        np.testing.assert_array_equal(distances[np.arange(len(values)), book.codes], distances.min(axis=1))
        assert book.values().dtype == np.float32
        errors.append(float(np.mean((book.values() - values) ** 2)))
    assert errors[0] > errors[1] > errors[2]


def test_few_distinct_values_are_kept_exactly():
    values = np.array([[0.5, -0.25], [0.5, 3.0]], dtype=np.float32)
    book = kmeans_1d(values, 2)
    np.testing.assert_array_equal(book.values().reshape(values.shape), values)


def test_deterministic_and_fast_enough_on_a_million_weights():
    values = np.random.default_rng(2).normal(0, 1, 1_000_000).astype(np.float32)
    a, b = kmeans_1d(values, 5), kmeans_1d(values, 5)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert len(a.centroids) == 32


def test_bits_out_of_range_refused():
    with pytest.raises(ValueError, match="bits=9"):
        kmeans_1d(np.ones(3), 9)


def test_assign_breaks_ties_towards_the_lower_centroid():
    np.testing.assert_array_equal(assign(np.array([0.5, 0.49, 0.51]), np.array([0.0, 1.0])), [0, 0, 1])


def test_centroid_gradient_equals_finite_differences():
    """Loss 0.5 * ||x @ W(c) - y||^2 with W = c[codes]; dL/dc from bincount of dL/dW against central differences."""
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 4, size=(6, 3))
    c = rng.normal(size=4)
    x, y = rng.normal(size=(5, 6)), rng.normal(size=(5, 3))

    def loss(centroids):
        return 0.5 * np.sum((x @ centroids[codes] - y) ** 2)

    weight_gradient = x.T @ (x @ c[codes] - y)
    analytic = centroid_gradient(codes, weight_gradient, 4)
    eps = 1e-6
    numeric = np.array([(loss(c + eps * e) - loss(c - eps * e)) / (2 * eps) for e in np.eye(4)])
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_update_centroids_lowers_the_loss_and_leaves_its_input_alone():
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 4, size=(6, 3))
    c = rng.normal(size=4).astype(np.float32)
    x, y = rng.normal(size=(5, 6)), rng.normal(size=(5, 3))
    before = c.copy()
    weight_gradient = x.T @ (x @ c[codes] - y)
    new = update_centroids(c, weight_gradient, codes, lr=1e-3)
    np.testing.assert_array_equal(c, before)
    assert new.dtype == np.float32
    assert 0.5 * np.sum((x @ new[codes] - y) ** 2) < 0.5 * np.sum((x @ c[codes] - y) ** 2)
