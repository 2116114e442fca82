"""Fits the piecewise polynomials of nerve's float gelu (cpp/src/activation.cpp,
gelu_erf8) and checks the float pipeline against float64.

    python cpp/tools/fit_gelu_tail.py          # prints the C++ tables and the error

gelu(x) = x * Phi(x); for a = |x|, Phi(-a) = f(a) * exp(-a^2/2) with
f(a) = erfcx(a / sqrt 2) / 2, a smooth function from 0.5 (a = 0) to ~1/(a sqrt(2 pi)).
f is fitted on 4 intervals of a, the octaves of a + 1: [0, 1), [1, 3), [3, 7),
[7, 15), so the kernel finds the interval from the exponent of a + 1 and looks
the coefficients up with one in-lane vpermilps each (4 entries; an 8-entry
vpermps is 3 uops on Zen 3, and with 8 intervals the lookups were the larger
part of the kernel). On each interval, a degree-11 polynomial in
s = a - centre, relative minimax (Lawson's iteratively reweighted least
squares); the constant term is split hi + lo so its rounding does not reach the
result. The kernel evaluates f = c0 + s * E(s) with E by Estrin's scheme (the
loop is bound by the latency of the longest chain, not by the FMA pipes), and
exp(-a^2/2) with a degree-6 minimax polynomial (EXP_COEF). Needs numpy and
scipy (dev only).
"""
import numpy as np
from scipy.special import erfcx, ndtr

BOUNDS = [0.0, 1.0, 3.0, 7.0, 15.0]
DEGREE = 11
f32 = np.float32
# exp(r) = 1 + r + r^2 q(r) on |r| <= ln2/2, q of degree 4: relative error
# 3.1e-9 (the fit in exp_coefficients()).
EXP_DEGREE = 4


def f(a):
    return 0.5 * erfcx(a / np.sqrt(2.0))


def lawson(V, y, w, iterations=60):
    """Weighted minimax of |w (V c - y)| by iteratively reweighted least squares."""
    lw = np.ones_like(y)
    for _ in range(iterations):
        c, *_ = np.linalg.lstsq(V * (w * np.sqrt(lw))[:, None], y * w * np.sqrt(lw), rcond=None)
        err = (V @ c - y) * w
        lw = lw * np.abs(err)
        lw /= lw.sum()
    return c, np.abs(err).max()


def fit_interval(lo, hi, degree=DEGREE):
    a = np.linspace(lo, hi, 20001)
    y = f(a)
    return lawson(np.vander(a - (lo + hi) / 2, degree + 1, increasing=True), y, 1.0 / y)


def exp_coefficients():
    r = np.linspace(-0.3466, 0.3466, 20001)
    r = r[np.abs(r) > 1e-4]
    q = (np.expm1(r) - r) / r**2
    c, err = lawson(np.vander(r, EXP_DEGREE + 1, increasing=True), q, r**2 / np.exp(r))
    return c.astype(f32), err


def tables():
    n = len(BOUNDS) - 1
    coef = np.zeros((DEGREE + 2, n))  # rows: c0 hi, c0 lo, c1 .. c_degree
    centres = np.zeros(n)
    worst = 0.0
    for i in range(n):
        c, e = fit_interval(BOUNDS[i], BOUNDS[i + 1])
        worst = max(worst, e)
        hi = f32(c[0])
        coef[0, i] = hi
        coef[1, i] = f32(c[0] - np.float64(hi))
        coef[2:, i] = c[1:].astype(f32)
        centres[i] = f32((BOUNDS[i] + BOUNDS[i + 1]) / 2)
    return coef.astype(f32), centres.astype(f32), worst


def fma(a, b, c):
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(f32)


def mul(a, b):
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64)).astype(f32)


def estrin(c, s):
    """sum c[k] s^k in float: pairs c[k] + c[k+1] s, then pairs of those with
    s^2, s^4, ... (the kernel's order)."""
    level = [fma(c[k + 1], s, c[k]) if k + 1 < len(c) else c[k] for k in range(0, len(c), 2)]
    power = mul(s, s)
    while len(level) > 1:
        level = [fma(level[k + 1], power, level[k]) if k + 1 < len(level) else level[k]
                 for k in range(0, len(level), 2)]
        power = mul(power, power)
    return level[0]


def exp_neg_half_square(a, q):
    """The kernel's exp(-a^2/2) in float, step by step."""
    log2e, ln2hi, ln2lo, magic = f32(1.44269504088896341), f32(0.693145751953125), f32(1.428606765330187045e-06), f32(12582912.0)
    sq = mul(a, a)
    sqlo = fma(a, a, -sq.astype(np.float64))
    t = fma(-sq, f32(0.5) * log2e, magic)
    n = (t - magic).astype(f32)
    r = (fma(-n, ln2hi, -mul(sq, 0.5)) + fma(-n, ln2lo, -mul(sqlo, 0.5))).astype(f32)
    r2 = mul(r, r)
    p = estrin(q, r)
    mant = (f32(1) + fma(r2, p, r)).astype(f32)
    return (mant.astype(np.float64) * np.exp2(n.astype(np.float64))).astype(f32)


def gelu_float(x, coef, centres, q):
    """The kernel's arithmetic, step by step in float32 (fma emulated)."""
    a = np.abs(x)
    idx = np.minimum(np.searchsorted(BOUNDS, a, side="right") - 1, len(centres) - 1)
    s = (a - centres[idx]).astype(f32)
    e_poly = estrin([coef[k, idx] for k in range(2, DEGREE + 2)], s)  # c1 .. c_degree
    fa = (fma(e_poly, s, coef[1, idx]) + coef[0, idx]).astype(f32)
    xf = mul(x, fa)
    e = exp_neg_half_square(a, q)
    lower = mul(xf, e)
    upper = fma(-xf, e, x)
    return np.where(x >= 0, upper, lower)


def ulps(got, ref):
    sp = np.spacing(np.abs(ref).astype(f32)).astype(np.float64)
    sp = np.maximum(sp, 16 * np.spacing(np.finfo(f32).tiny).astype(np.float64))
    return np.abs(got.astype(np.float64) - ref) / sp


def vpermilps_order(row):
    """vpermilps reads the low 2 bits of the biased exponent of a + 1 (127 + i
    for interval i), so interval i goes to slot (i + 3) % 4."""
    out = [None] * len(row)
    for i, v in enumerate(row):
        out[(i + 3) % 4] = v
    return out


def main():
    coef, centres, worst = tables()
    q, exp_err = exp_coefficients()
    x = np.concatenate([np.linspace(-13, 13, 2000001),
                        np.random.default_rng(0).standard_normal(1000000) * 3]).astype(f32)
    x = x[np.abs(x) <= 13]
    ref = x.astype(np.float64) * ndtr(x.astype(np.float64))
    u = ulps(gelu_float(x, coef, centres, q), ref)
    print(f"// relative fit error {worst:.1e}, exp {exp_err:.1e}; emulated float gelu: max {u.max():.2f} ulp")
    fmt = lambda v: ", ".join(f"{float(t):.9e}f" for t in v)
    print(f"constexpr float kGeluExpQ[{EXP_DEGREE + 1}] = {{{fmt(q)}}};")
    print(f"alignas(16) constexpr float kGeluCentre[4] = {{{fmt(vpermilps_order(centres))}}};")
    print(f"alignas(16) constexpr float kGeluCoef[{DEGREE + 2}][4] = {{")
    for row in coef:
        print(f"    {{{fmt(vpermilps_order(row))}}},")
    print("};")


if __name__ == "__main__":
    main()
