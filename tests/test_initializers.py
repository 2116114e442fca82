"""Initializer statistics against their defining formulas, computed here in
numpy: std within 2% on large shapes, bounds, ±2σ truncation with the
realised-std correction, fan modes, orthogonality, seeding and thread-count
invariance."""
import math

import numpy as np
import pytest

import nerve as nv

FI, FO = 400, 600           # fans of the big test shape: 240,000 draws
SHAPE = (FI, FO)


def draw(name, shape=SHAPE, seed=3, **kw):
    return nv.initializers.get(name, **kw)(shape=shape, seed=seed).astype(np.float64)


# name -> (distribution, target std, bound or None)
def _cases():
    avg = (FI + FO) / 2
    return {
        "glorot_uniform": ("uniform", math.sqrt(2 / (FI + FO)), math.sqrt(6 / (FI + FO))),
        "xavier_uniform": ("uniform", math.sqrt(2 / (FI + FO)), math.sqrt(6 / (FI + FO))),
        "glorot_normal": ("normal", math.sqrt(2 / (FI + FO)), None),
        "xavier_normal": ("normal", math.sqrt(1 / avg), None),
        "he_uniform": ("uniform", math.sqrt(2 / FI), math.sqrt(6 / FI)),
        "kaiming_uniform": ("uniform", math.sqrt(2 / FI), math.sqrt(6 / FI)),
        "he_normal": ("truncated", math.sqrt(2 / FI), None),
        "kaiming_normal": ("truncated", math.sqrt(2 / FI), None),
        "lecun_uniform": ("uniform", math.sqrt(1 / FI), math.sqrt(3 / FI)),
        "lecun_normal": ("truncated", math.sqrt(1 / FI), None),
        "standard_uniform": ("uniform", 1 / math.sqrt(3 * FI), 1 / math.sqrt(FI)),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
def test_std_bounds_and_truncation(name):
    kind, std, bound = _cases()[name]
    w = draw(name)
    assert w.shape == SHAPE
    assert abs(w.mean()) < 4 * std / math.sqrt(w.size)   # 4 standard errors
    assert abs(w.std() / std - 1) < 0.02, (w.std(), std)
    if kind == "uniform":
        assert np.abs(w).max() <= bound * (1 + 1e-6)
        # U(-a, a) fills its interval: the extremes come close to ±a.
        assert w.max() > 0.99 * bound and w.min() < -0.99 * bound
        # flat histogram: every tenth of the interval holds ~10%
        hist, _ = np.histogram(w, bins=10, range=(-bound, bound))
        np.testing.assert_allclose(hist / w.size, 0.1, atol=0.005)
    elif kind == "truncated":
        # σ is divided by 0.8796…, so the cut sits at 2σ/0.8796… of the realised std.
        sigma = std / 0.87962566103423978
        assert np.abs(w).max() <= 2 * sigma * (1 + 1e-6)
        assert np.abs(w).max() > 1.98 * sigma
        # without the correction the std would be 12% low
        assert abs(w.std() / (std * 0.87962566103423978) - 1) > 0.1
    else:
        # untruncated: tails beyond 3σ occur at the normal rate (0.27%)
        frac = np.mean(np.abs(w) > 3 * std)
        assert 0.0020 < frac < 0.0034, frac


def test_truncated_normal_constant():
    # The std of a standard normal truncated to [-2, 2], from its closed form.
    a = 2.0
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    Z = math.erf(a / math.sqrt(2))
    expected = math.sqrt(1 - 2 * a * phi / Z)
    assert abs(nv.initializers.TRUNCATED_NORMAL_STD - expected) < 1e-15


@pytest.mark.parametrize("mode,n", [("fan_in", FI), ("fan_out", FO), ("fan_avg", (FI + FO) / 2)])
@pytest.mark.parametrize("distribution", ["truncated_normal", "untruncated_normal", "uniform"])
def test_variance_scaling_modes(mode, n, distribution):
    scale = 3.0
    w = draw("variance_scaling", scale=scale, mode=mode, distribution=distribution)
    std = math.sqrt(scale / n)
    assert abs(w.std() / std - 1) < 0.02
    if distribution == "uniform":
        assert np.abs(w).max() <= math.sqrt(3) * std * (1 + 1e-6)
    elif distribution == "truncated_normal":
        assert np.abs(w).max() <= 2 * std / nv.initializers.TRUNCATED_NORMAL_STD * (1 + 1e-6)
    else:
        assert np.abs(w).max() > 3.5 * std


def test_fans_of_other_ranks():
    # 1-D (bias-like): fan_in = fan_out = size
    w = draw("lecun_uniform", shape=(90000,))
    assert abs(w.std() / math.sqrt(1 / 90000) - 1) < 0.02
    # conv-like (kh, kw, in, out): fans scaled by the receptive field
    w = draw("he_uniform", shape=(3, 3, 64, 128))
    assert abs(w.std() / math.sqrt(2 / (9 * 64)) - 1) < 0.02


def test_random_normal_uniform_constant():
    w = draw("random_normal", mean=0.5, stddev=0.2)
    assert abs(w.mean() - 0.5) < 0.002 and abs(w.std() / 0.2 - 1) < 0.02
    w = draw("random_uniform", minval=-0.3, maxval=0.1)
    assert w.min() >= -0.3 and w.max() < 0.1 + 1e-7
    assert abs(w.mean() + 0.1) < 0.002 and abs(w.std() / (0.4 / math.sqrt(12)) - 1) < 0.02
    assert np.all(draw("zeros", shape=(3, 4)) == 0)
    assert np.all(draw("ones", shape=(3, 4)) == 1)
    assert np.all(draw("constant", shape=(3, 4), value=-2.5) == -2.5)


@pytest.mark.parametrize("shape", [(300, 120), (120, 300), (200, 200), (4, 5, 60)])
@pytest.mark.parametrize("gain", [1.0, 1.7])
def test_orthogonal(shape, gain):
    w = draw("orthogonal", shape=shape, gain=gain)
    q = w.reshape(-1, shape[-1])
    rows, cols = q.shape
    if rows >= cols:   # tall: orthonormal columns
        gram = q.T @ q
    else:              # wide: orthonormal rows (QᵀQ has rank rows < cols)
        gram = q @ q.T
        assert np.linalg.matrix_rank(q.T @ q) == rows
    np.testing.assert_allclose(gram, gain ** 2 * np.eye(min(rows, cols)), atol=2e-5 * gain ** 2)


def test_orthogonal_rejects_vectors():
    with pytest.raises(ValueError, match="2 dimensions"):
        nv.initializers.get("orthogonal")(shape=(10,), seed=0)


ALL = ["glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform", "lecun_normal",
       "standard_uniform", "random_normal", "random_uniform", "orthogonal", "variance_scaling"]


@pytest.mark.parametrize("name", ALL)
def test_seeding(name):
    init = nv.initializers.get(name)
    a = init(shape=(70, 50), seed=5)
    b = init(shape=(70, 50), seed=5)
    c = init(shape=(70, 50), seed=6)
    assert a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    # seed=None: the global seed picks fresh streams, reproducible after manual_seed
    nv.manual_seed(11)
    d1, d2 = init(shape=(70, 50)), init(shape=(70, 50))
    nv.manual_seed(11)
    e1, e2 = init(shape=(70, 50)), init(shape=(70, 50))
    assert np.array_equal(d1, e1) and np.array_equal(d2, e2)
    assert not np.array_equal(d1, d2)


@pytest.mark.parametrize("name", ["he_normal", "glorot_uniform", "orthogonal", "lecun_normal"])
def test_thread_count_invariance(name):
    before = nv.get_num_threads()
    try:
        out = []
        for t in (1, 2):
            nv.set_num_threads(t)
            out.append(nv.initializers.get(name)(shape=(512, 300), seed=9))
        assert np.array_equal(out[0], out[1])
    finally:
        nv.set_num_threads(before)


def test_dense_layers_use_their_initializer():
    nv.manual_seed(2)
    m = nv.Sequential([nv.layers.Dense(500, kernel_initializer="he_normal"),
                       nv.layers.Dense(10, kernel_initializer="zeros", bias_initializer="ones")],
                      input_dim=800)
    k = m.layers[0].kernel.value
    assert abs(k.std() / math.sqrt(2 / 800) - 1) < 0.02
    assert np.abs(k).max() <= 2 * math.sqrt(2 / 800) / nv.initializers.TRUNCATED_NORMAL_STD * (1 + 1e-6)
    assert np.all(m.layers[1].kernel.value == 0) and np.all(m.layers[1].bias.value == 1)


def test_bad_initializer_arguments():
    with pytest.raises(ValueError, match="he_normal"):
        nv.initializers.get("he_normall")
    with pytest.raises(ValueError):
        nv.initializers.get("variance_scaling", mode="fan_sideways")
    with pytest.raises(ValueError):
        nv.initializers.get("variance_scaling", scale=-1.0)
    with pytest.raises(ValueError):
        nv.initializers.get("random_uniform", minval=1.0, maxval=0.0)
    with pytest.raises(ValueError):
        nv.initializers.get("he_normal")(shape=(3, 3), seed=-1)
