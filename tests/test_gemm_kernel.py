"""nerve's GEMM (cpp/src/gemm.cpp) called directly through _core.gemm, against
float64 numpy: every transpose combination, accumulate on and off, shapes that
are not multiples of the micro-kernel's 6 x 16 block or of its depth blocks,
strided leading dimensions, and NaN garbage in an output that is overwritten.
Shapes up to 40 also reach the matrix-vector, rank-K and tiny-product paths.
"""
import itertools

import numpy as np
import pytest

import nerve as nv
from nerve import _core

TRANSPOSES = list(itertools.product([False, True], repeat=2))


def _operands(M, N, K, trans_a, trans_b, rng, pad=0):
    """op(a) is M x K and op(b) K x N; with pad > 0 each operand is a view of a
    wider array (row stride = columns + pad)."""
    def matrix(rows, cols):
        full = rng.uniform(-1, 1, (rows, cols + pad)).astype(np.float32)
        return full[:, :cols]

    a = matrix(K, M) if trans_a else matrix(M, K)
    b = matrix(N, K) if trans_b else matrix(K, N)
    return a, b


def _expected(a, b, trans_a, trans_b, c0=None):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    out = (a64.T if trans_a else a64) @ (b64.T if trans_b else b64)
    return out if c0 is None else out + c0.astype(np.float64)


def _check(c, expected, K):
    # float32 sums of K products of values in [-1, 1]
    np.testing.assert_allclose(c, expected, rtol=1e-4, atol=2e-6 * K + 1e-6)


def _gemm(a, b, c, trans_a, trans_b, accumulate):
    _core.gemm(a, b, c, trans_a, trans_b, accumulate)


RANDOM_SHAPES = [tuple(int(v) for v in s)
                 for s in np.random.default_rng(7).integers(1, 41, size=(40, 3))]
# Around the 6 x 16 micro-block and the depth block of 392 (balanced into
# equal pieces), a product large enough to be split into tiles, and row
# vectors times matrices large enough to be cut in depth chunks (batch 1).
EDGE_SHAPES = [(6, 16, 5), (7, 17, 6), (5, 15, 391), (13, 33, 392), (12, 32, 393), (19, 40, 784),
               (11, 47, 769), (97, 131, 1000), (517, 263, 801), (1, 512, 784), (1, 300, 1001)]


@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("M,N,K", RANDOM_SHAPES + EDGE_SHAPES)
def test_gemm_matches_numpy(M, N, K, trans_a, trans_b, accumulate):
    rng = np.random.default_rng(M * 10007 + N * 101 + K)
    a, b = _operands(M, N, K, trans_a, trans_b, rng)
    if accumulate:
        c = rng.uniform(-1, 1, (M, N)).astype(np.float32)
        expected = _expected(a, b, trans_a, trans_b, c0=c)
    else:
        # garbage that must not leak into the result (not even as 0 * NaN)
        c = np.full((M, N), np.nan, np.float32)
        c[::2] = np.inf
        expected = _expected(a, b, trans_a, trans_b)
    _gemm(a, b, c, trans_a, trans_b, accumulate)
    _check(c, expected, K)


@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("M,N,K", [(23, 37, 29), (131, 70, 400), (517, 263, 801)] +
                         [(37, n, 129) for n in range(2, 14)])
def test_gemm_strided_leading_dimensions(M, N, K, trans_a, trans_b):
    """Operands and output as column slices of wider arrays: the padding
    columns of the output must stay untouched. N = 2..12 with trans_a (dW of
    a narrow layer) takes the unpacked narrow kernel, 13 the packed one; 37
    rows leave 5 for its masked last block."""
    rng = np.random.default_rng(M + N + K)
    a, b = _operands(M, N, K, trans_a, trans_b, rng, pad=5)
    out = np.full((M, N + 3), 7.0, np.float32)
    c = out[:, 1:N + 1]
    c[...] = np.nan
    _gemm(a, b, c, trans_a, trans_b, False)
    _check(c, _expected(a, b, trans_a, trans_b), K)
    assert np.all(out[:, 0] == 7.0) and np.all(out[:, N + 1:] == 7.0)
    c0 = c.copy()
    _gemm(a, b, c, trans_a, trans_b, True)
    _check(c, _expected(a, b, trans_a, trans_b, c0=c0), K)
    assert np.all(out[:, 0] == 7.0) and np.all(out[:, N + 1:] == 7.0)


@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("M,N,K", [(11, 520, 300), (800, 515, 389)])
def test_gemm_packs_rows_a_multiple_of_4kb_apart(M, N, K, trans_b):
    """A row-major op(A) whose rows lie 1024 floats apart, on a tile of >= 512
    columns (one tile; 4 row tiles of full width), takes the kernel's packed-A
    route instead of being read in place."""
    rng = np.random.default_rng(M + K)
    a = rng.uniform(-1, 1, (M, 1024)).astype(np.float32)[:, :K]
    _, b = _operands(M, N, K, False, trans_b, rng)
    c = np.full((M, N), np.nan, np.float32)
    _gemm(a, b, c, False, trans_b, False)
    _check(c, _expected(a, b, False, trans_b), K)
    c0 = c.copy()
    _gemm(a, b, c, False, trans_b, True)
    _check(c, _expected(a, b, False, trans_b, c0=c0), K)


# The last: the narrow dW kernel (2-12 output columns).
@pytest.mark.parametrize("M,N,K,trans_a,trans_b",
                         [(517, 263, 801, ta, tb) for ta, tb in TRANSPOSES] + [(300, 10, 600, True, False)])
def test_gemm_does_not_depend_on_thread_count(M, N, K, trans_a, trans_b):
    rng = np.random.default_rng(11)
    a, b = _operands(M, N, K, trans_a, trans_b, rng)
    before = _core.num_threads()
    results = []
    try:
        for threads in (1, 2):
            nv.set_num_threads(threads)
            c = np.empty((M, N), np.float32)
            _gemm(a, b, c, trans_a, trans_b, False)
            results.append(c)
    finally:
        nv.set_num_threads(before)
    assert np.array_equal(results[0], results[1])
    _check(results[0], _expected(a, b, trans_a, trans_b), K)


def test_gemm_zero_depth_and_empty():
    c = np.full((3, 4), np.nan, np.float32)
    _gemm(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32), c, False, False, False)
    assert np.all(c == 0)
    c[...] = 2.0
    _gemm(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32), c, False, False, True)
    assert np.all(c == 2.0)
    _gemm(np.zeros((0, 5), np.float32), np.zeros((5, 4), np.float32),
          np.zeros((0, 4), np.float32), False, False, False)


def test_gemm_rejects_bad_operands():
    a = np.ones((3, 5), np.float32)
    b = np.ones((5, 4), np.float32)
    c = np.zeros((3, 4), np.float32)
    bad = [
        (a, a, c),                              # inner dimensions differ
        (a, b, np.zeros((4, 3), np.float32)),   # wrong output shape
        (a.astype(np.float64), b, c),           # not float32
        (a[:, ::2], np.ones((3, 4), np.float32), c),  # columns not contiguous
        (a, b, c[::-1]),                        # rows reversed
        (np.ones(5, np.float32), b, c),         # not 2-D
    ]
    for args in bad:
        with pytest.raises(ValueError):
            _gemm(*args, False, False, False)
    readonly = c.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError):
        _gemm(a, b, readonly, False, False, False)
