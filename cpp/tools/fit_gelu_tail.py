"""Fits the piecewise polynomials of nerve's float gelu (cpp/src/activation.cpp,
GeluErf8) and checks the float pipeline against float64.

    python cpp/tools/fit_gelu_tail.py          # prints the C++ tables and the error

gelu(x) = x * Phi(x); for a = |x|, Phi(-a) = f(a) * exp(-a^2/2) with
f(a) = erfcx(a / sqrt 2) / 2, a smooth function from 0.5 (a = 0) to ~1/(a sqrt(2 pi)).
f is fitted on 8 intervals of a, the halves of the octaves of a + 1:
[0, .5), [.5, 1), [1, 2), [2, 3), [3, 5), [5, 7), [7, 11), [11, 15), so the
kernel finds the interval from the exponent and top mantissa bit of a + 1.
On each, a degree-8 polynomial in s = a - centre, relative minimax (Lawson's
iteratively reweighted least squares); the constant term is split hi + lo so
its rounding does not reach the result. Needs numpy and scipy (dev only).
"""
import numpy as np
from scipy.special import erfcx, ndtr

BOUNDS = [0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 11.0, 15.0]
DEGREE = 8
f32 = np.float32


def f(a):
    return 0.5 * erfcx(a / np.sqrt(2.0))


def fit_interval(lo, hi, degree=DEGREE):
    a = np.linspace(lo, hi, 20001)
    s = a - (lo + hi) / 2
    y = f(a)
    V = np.vander(s, degree + 1, increasing=True)
    w = 1.0 / y
    lw = np.ones_like(a)
    for _ in range(60):
        c, *_ = np.linalg.lstsq(V * (w * np.sqrt(lw))[:, None], y * w * np.sqrt(lw), rcond=None)
        err = (V @ c - y) / y
        lw = lw * np.abs(err)
        lw /= lw.sum()
    return c, np.abs(err).max()


def tables():
    coef = np.zeros((DEGREE + 2, 8))  # rows: c0 hi, c0 lo, c1 .. c_degree
    centres = np.zeros(8)
    worst = 0.0
    for i in range(8):
        c, e = fit_interval(BOUNDS[i], BOUNDS[i + 1])
        worst = max(worst, e)
        hi = f32(c[0])
        coef[0, i] = hi
        coef[1, i] = f32(c[0] - np.float64(hi))
        coef[2:, i] = c[1:].astype(f32)
        centres[i] = f32((BOUNDS[i] + BOUNDS[i + 1]) / 2)
    return coef.astype(f32), centres.astype(f32), worst


def fma(a, b, c):
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(f32)


def gelu_float(x, coef, centres):
    """The kernel's arithmetic, step by step in float32 (fma emulated)."""
    a = np.abs(x)
    idx = np.minimum(np.searchsorted(BOUNDS, a, side="right") - 1, 7)
    s = (a - centres[idx]).astype(f32)
    r = coef[-1, idx]
    for k in range(DEGREE + 1, 2, -1):
        r = fma(r, s, coef[k - 1, idx])
    q = (fma(r, s, coef[1, idx]) + coef[0, idx]).astype(f32)
    a64 = a.astype(np.float64)
    e = np.exp(-a64 * a64 / 2).astype(f32)  # the kernel's exp of the exact -a^2/2: within 1 ulp
    tail = (q * e).astype(f32)
    phi = np.where(x >= 0, (f32(1) - tail).astype(f32), tail)
    return (x * phi).astype(f32)


def ulps(got, ref):
    sp = np.spacing(np.abs(ref).astype(f32)).astype(np.float64)
    sp = np.maximum(sp, 16 * np.spacing(np.finfo(f32).tiny).astype(np.float64))
    return np.abs(got.astype(np.float64) - ref) / sp


def main():
    coef, centres, worst = tables()
    x = np.concatenate([np.linspace(-13, 13, 2000001),
                        np.random.default_rng(0).standard_normal(1000000) * 3]).astype(f32)
    x = x[np.abs(x) <= 13]
    ref = x.astype(np.float64) * ndtr(x.astype(np.float64))
    u = ulps(gelu_float(x, coef, centres), ref)
    print(f"// relative fit error {worst:.1e}; emulated float gelu: max {u.max():.2f} ulp")
    fmt = lambda v: ", ".join(f"{float(t):.9e}f" for t in v)
    print(f"alignas(32) constexpr float kGeluCentre[8] = {{{fmt(centres)}}};")
    print(f"alignas(32) constexpr float kGeluCoef[{DEGREE + 2}][8] = {{")
    for row in coef:
        print(f"    {{{fmt(row)}}},")
    print("};")


if __name__ == "__main__":
    main()
