"""Every optimizer against an independent float64 numpy implementation of
PyTorch's documented update rules (Keras's for FTRL), through the Python API:
trajectories, lr changes, clipping, state round trips, validation, weight-decay
exclusion; torch.optim as an optional second oracle."""
import copy

import numpy as np
import pytest

import nerve as nv

SHAPES = [(7, 5), (13,), (201, 200)]  # 35, 13 and 40,200 elements: SIMD tails and two kernel chunks
STEPS = 60


# ---------------------------------------------------------------------------
# The oracle: float64 numpy, one function per optimizer, written from the
# pseudo-code in the torch.optim documentation (and keras.optimizers.Ftrl).

DEFAULTS = {
    "SGD": dict(lr=1e-2, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0),
    "Adagrad": dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10),
    "RMSprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                    nesterov=False),
    "Adadelta": dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0),
    "Adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False),
    "AdamW": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False),
    "Adamax": dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    "NAdam": dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3),
    "Ftrl": dict(lr=1e-3, learning_rate_power=-0.5, initial_accumulator_value=0.1,
                 l1_regularization_strength=0.0, l2_regularization_strength=0.0,
                 l2_shrinkage_regularization_strength=0.0, beta=0.0),
    "Lion": dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0),
    # adabelief-pytorch 0.2.1's defaults
    "AdaBelief": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.0, amsgrad=False,
                      weight_decouple=True, fixed_decay=False, rectify=True, degenerated_to_sgd=True),
}
# torch.optim lacks these (the torch oracle skips them)
NOT_IN_TORCH = {"Ftrl", "Lion", "AdaBelief"}


class Oracle:
    """One tensor's state and update for one optimizer (all rules elementwise)."""

    def __init__(self, name, hyper, p):
        self.name = name
        self.h = {**DEFAULTS[name], **hyper}
        self.p = np.asarray(p, np.float64).copy()
        self.t = 0
        self.s = {}
        self.mu_product = 1.0

    def step(self, g, lr=None):
        h, p, s = self.h, self.p, self.s
        lr = h["lr"] if lr is None else lr
        g = np.asarray(g, np.float64)
        self.t += 1
        t = self.t
        n = self.name
        wd = h.get("weight_decay", 0.0)
        if n == "SGD":
            if wd:
                g = g + wd * p
            if h["momentum"]:
                b = g.copy() if t == 1 else h["momentum"] * s["b"] + (1 - h["dampening"]) * g
                s["b"] = b
                g = g + h["momentum"] * b if h["nesterov"] else b
            self.p = p - lr * g
        elif n == "Adagrad":
            if t == 1:
                s["sum"] = np.full_like(p, h["initial_accumulator_value"])
            clr = lr / (1 + (t - 1) * h["lr_decay"])
            if wd:
                g = g + wd * p
            s["sum"] = s["sum"] + g * g
            self.p = p - clr * g / (np.sqrt(s["sum"]) + h["eps"])
        elif n == "RMSprop":
            if t == 1:
                s["v"] = np.zeros_like(p)
                s["b"] = np.zeros_like(p)
                s["ga"] = np.zeros_like(p)
            a = h["alpha"]
            if wd:
                g = g + wd * p
            s["v"] = a * s["v"] + (1 - a) * g * g
            if h["centered"]:
                s["ga"] = a * s["ga"] + (1 - a) * g
                avg = np.sqrt(s["v"] - s["ga"] ** 2) + h["eps"]
            else:
                avg = np.sqrt(s["v"]) + h["eps"]
            if h["momentum"] > 0:
                u = g / avg
                s["b"] = h["momentum"] * s["b"] + u
                if h["nesterov"]:  # optax rmsprop(nesterov=True), PyTorch eps placement
                    self.p = p - lr * (u + h["momentum"] * s["b"])
                else:
                    self.p = p - lr * s["b"]
            else:
                self.p = p - lr * g / avg
        elif n == "Adadelta":
            if t == 1:
                s["v"] = np.zeros_like(p)
                s["u"] = np.zeros_like(p)
            rho, eps = h["rho"], h["eps"]
            if wd:
                g = g + wd * p
            s["v"] = rho * s["v"] + (1 - rho) * g * g
            delta = np.sqrt(s["u"] + eps) / np.sqrt(s["v"] + eps) * g
            s["u"] = rho * s["u"] + (1 - rho) * delta * delta
            self.p = p - lr * delta
        elif n in ("Adam", "AdamW"):
            if t == 1:
                s["m"] = np.zeros_like(p)
                s["v"] = np.zeros_like(p)
                s["vmax"] = np.zeros_like(p)
            b1, b2 = h["betas"]
            if n == "AdamW":
                p = p * (1 - lr * wd)
            elif wd:
                g = g + wd * p
            s["m"] = b1 * s["m"] + (1 - b1) * g
            s["v"] = b2 * s["v"] + (1 - b2) * g * g
            v = s["v"]
            if h["amsgrad"]:
                s["vmax"] = np.maximum(s["vmax"], s["v"])
                v = s["vmax"]
            denom = np.sqrt(v) / np.sqrt(1 - b2 ** t) + h["eps"]
            self.p = p - lr / (1 - b1 ** t) * s["m"] / denom
        elif n == "Adamax":
            if t == 1:
                s["m"] = np.zeros_like(p)
                s["u"] = np.zeros_like(p)
            b1, b2 = h["betas"]
            if wd:
                g = g + wd * p
            s["m"] = b1 * s["m"] + (1 - b1) * g
            s["u"] = np.maximum(b2 * s["u"], np.abs(g) + h["eps"])
            self.p = p - lr / (1 - b1 ** t) * s["m"] / s["u"]
        elif n == "NAdam":
            if t == 1:
                s["m"] = np.zeros_like(p)
                s["v"] = np.zeros_like(p)
            b1, b2 = h["betas"]
            psi = h["momentum_decay"]
            if wd:
                g = g + wd * p
            mu = b1 * (1 - 0.5 * 0.96 ** (t * psi))
            mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
            self.mu_product *= mu
            s["m"] = b1 * s["m"] + (1 - b1) * g
            s["v"] = b2 * s["v"] + (1 - b2) * g * g
            denom = np.sqrt(s["v"] / (1 - b2 ** t)) + h["eps"]
            self.p = (p - lr * (1 - mu) / (1 - self.mu_product) * g / denom
                      - lr * mu_next / (1 - self.mu_product * mu_next) * s["m"] / denom)
        elif n == "Ftrl":  # keras.optimizers.Ftrl.update_step
            if t == 1:
                s["n"] = np.full_like(p, h["initial_accumulator_value"])
                s["z"] = np.zeros_like(p)
            pw = -h["learning_rate_power"]
            l1 = h["l1_regularization_strength"]
            l2 = h["l2_regularization_strength"] + h["beta"] / (2.0 * lr)
            gs = g + 2 * h["l2_shrinkage_regularization_strength"] * p
            n_new = s["n"] + g * g
            s["z"] = s["z"] + gs - (n_new ** pw - s["n"] ** pw) / lr * p
            quadratic = n_new ** pw / lr + 2 * l2
            self.p = (np.clip(s["z"], -l1, l1) - s["z"]) / quadratic
            s["n"] = n_new
        elif n == "Lion":
            # Chen et al. (2023), Program 1: decoupled weight decay.
            b1, b2 = h["betas"]
            m = s.get("m", np.zeros_like(p))
            c = b1 * m + (1 - b1) * g
            self.p = p - lr * (np.sign(c) + wd * p)
            s["m"] = b2 * m + (1 - b2) * g
        elif n == "AdaBelief":
            # adabelief_pytorch 0.2.1, AdaBelief.step, line by line.
            b1, b2 = h["betas"]
            eps = h["eps"]
            if h["weight_decouple"]:
                p = p * (1.0 - (wd if h["fixed_decay"] else lr * wd))
            elif wd:
                g = g + wd * p
            if t == 1:
                s["m"], s["s"], s["smax"] = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
            s["m"] = b1 * s["m"] + (1 - b1) * g
            r = g - s["m"]
            s["s"] = b2 * s["s"] + (1 - b2) * r * r + eps
            if h["amsgrad"]:
                s["smax"] = np.maximum(s["smax"], s["s"])
                denom = np.sqrt(s["smax"]) / np.sqrt(bc2) + eps
            else:
                denom = np.sqrt(s["s"]) / np.sqrt(bc2) + eps
            if not h["rectify"]:
                p = p - lr / bc1 * s["m"] / denom
            else:
                b2t = b2 ** t
                n_max = 2 / (1 - b2) - 1
                n_sma = n_max - 2 * t * b2t / (1 - b2t)
                if n_sma >= 5:
                    step = np.sqrt((1 - b2t) * (n_sma - 4) / (n_max - 4) * (n_sma - 2) / n_sma * n_max
                                   / (n_max - 2)) / bc1
                    p = p - step * lr * s["m"] / (np.sqrt(s["s"]) + eps)
                elif h["degenerated_to_sgd"]:
                    p = p - lr / bc1 * s["m"]
            self.p = p
        else:  # pragma: no cover
            raise AssertionError(n)
        return self.p


CASES = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.02, initial_accumulator_value=0.5, eps=1e-6)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, momentum=0.8, weight_decay=0.01)),
    ("RMSprop", dict(lr=0.01, centered=True)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, nesterov=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, nesterov=True, centered=True, weight_decay=0.01)),
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.01)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, eps=1e-3, weight_decay=0.05)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.01, amsgrad=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("Adamax", dict(lr=0.01)),
    ("Adamax", dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.01)),
    ("NAdam", dict(lr=0.01)),
    ("NAdam", dict(lr=0.01, momentum_decay=0.02, weight_decay=0.01, betas=(0.85, 0.99))),
    ("Ftrl", dict(lr=0.1)),
    ("Ftrl", dict(lr=0.1, l1_regularization_strength=0.01, l2_regularization_strength=0.05, beta=0.5)),
    ("Ftrl", dict(lr=0.1, l2_shrinkage_regularization_strength=0.05, learning_rate_power=-0.3,
                  initial_accumulator_value=0.2)),
    ("Ftrl", dict(lr=0.1, learning_rate_power=0.0)),
    ("Lion", dict(lr=1e-3)),
    ("Lion", dict(lr=1e-3, betas=(0.8, 0.95), weight_decay=0.5)),
    ("AdaBelief", dict(lr=1e-2)),
    ("AdaBelief", dict(lr=1e-2, weight_decay=0.1)),
    ("AdaBelief", dict(lr=1e-2, weight_decay=0.01, weight_decouple=False, betas=(0.8, 0.99))),
    ("AdaBelief", dict(lr=1e-2, weight_decay=0.01, fixed_decay=True, amsgrad=True)),
    ("AdaBelief", dict(lr=1e-2, rectify=False, eps=1e-12)),
    ("AdaBelief", dict(lr=1e-2, rectify=False, amsgrad=True, weight_decay=0.05)),
    ("AdaBelief", dict(lr=1e-2, degenerated_to_sgd=False)),
]


def case_id(c):
    name, h = c
    return name + ("-" + "-".join(f"{k}={v}" for k, v in h.items()) if h else "")


def make_params(seed=0, shapes=SHAPES):
    r = np.random.default_rng(seed)
    return [nv.Parameter(r.standard_normal(s).astype(np.float32)) for s in shapes]


def grad_sequence(steps=STEPS, seed=1, shapes=SHAPES):
    """Gradients with a drift and noise, different scales per tensor, some
    exact zeros (sparse features) and a sign-flipping part."""
    r = np.random.default_rng(seed)
    seq = []
    drift = [r.standard_normal(s) for s in shapes]
    for t in range(steps):
        gs = []
        for k, s in enumerate(shapes):
            g = (0.5 * drift[k] + r.standard_normal(s)) * (1.0 + k) * (1.0 + 0.5 * np.sin(t / 5))
            g[r.random(s) < 0.1] = 0.0
            gs.append(g.astype(np.float32))
        seq.append(gs)
    return seq


def tolerance(name):
    # Float32 arithmetic in the kernel against float64 here: errors of a few
    # ulps per operation accumulate over 60 steps. Adadelta and FTRL divide
    # by quantities built from small accumulators, so they get a little more.
    return dict(rtol=2e-4, atol=5e-5) if name in ("Adadelta", "Ftrl") else dict(rtol=1e-4, atol=2e-5)


def run_both(name, hyper, steps=STEPS, lr_at=None, opt_kw=None):
    params = make_params()
    oracles = [Oracle(name, hyper, p.value) for p in params]
    opt = getattr(nv.optimizers, name)(params, **hyper, **(opt_kw or {}))
    lr = hyper.get("lr", DEFAULTS[name]["lr"])
    for t, gs in enumerate(grad_sequence(steps)):
        if lr_at is not None and t in lr_at:
            lr = lr_at[t]
            opt.lr = lr
        for p, o, g in zip(params, oracles, gs):
            p.grad[...] = g
            o.step(g, lr=lr)
        opt.step()
        assert opt.iterations == t + 1
    return params, oracles, opt


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_trajectory_matches_numpy_oracle(case):
    name, hyper = case
    params, oracles, _ = run_both(name, hyper)
    for p, o in zip(params, oracles):
        start = make_params()[params.index(p)].value
        moved = np.max(np.abs(o.p - start))
        assert moved > 1e-3, "the test must move the parameters"
        np.testing.assert_allclose(p.value, o.p, **tolerance(name))


@pytest.mark.parametrize("name,hyper", [
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05)),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("Adam", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("NAdam", dict(lr=0.01)),
    ("Ftrl", dict(lr=0.1, l1_regularization_strength=0.01, beta=0.5)),
])
def test_mid_training_lr_change(name, hyper):
    # PyTorch keeps lr outside every buffer: a new lr scales only the steps
    # from then on (the oracle applies the new lr from step 20 and 40).
    lr = hyper["lr"]
    params, oracles, opt = run_both(name, hyper, lr_at={20: lr / 3, 40: lr * 2})
    assert opt.lr == pytest.approx(lr * 2)
    for p, o in zip(params, oracles):
        np.testing.assert_allclose(p.value, o.p, **tolerance(name))
    # and it differs from not changing lr at all
    same, _, _ = run_both(name, hyper)
    assert not np.allclose(same[0].value, params[0].value, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Clipping

def keras_clip(gs, clipvalue=None, clipnorm=None, global_clipnorm=None):
    gs = [np.asarray(g, np.float64) for g in gs]
    if clipvalue is not None:
        gs = [np.clip(g, -clipvalue, clipvalue) for g in gs]
    if clipnorm is not None:
        gs = [g * clipnorm / max(np.sqrt((g * g).sum()), clipnorm) for g in gs]
    if global_clipnorm is not None:
        total = np.sqrt(sum((g * g).sum() for g in gs))
        gs = [g * global_clipnorm / max(total, global_clipnorm) for g in gs]
    return gs


@pytest.mark.parametrize("clip", [dict(clipvalue=0.5), dict(clipnorm=3.0), dict(global_clipnorm=20.0),
                                  dict(clipvalue=1.0, clipnorm=5.0, global_clipnorm=30.0)],
                         ids=lambda c: "+".join(c))
@pytest.mark.parametrize("name,hyper", [("SGD", dict(lr=0.05, momentum=0.9)), ("Adam", dict(lr=0.01))])
def test_clipping_matches_keras_order(clip, name, hyper):
    params = make_params()
    oracles = [Oracle(name, hyper, p.value) for p in params]
    opt = getattr(nv.optimizers, name)(params, **hyper, **clip)
    for gs in grad_sequence(20):
        clipped = keras_clip(gs, **clip)
        assert any(not np.allclose(c, g) for c, g in zip(clipped, gs)), "the test must clip"
        for p, o, g, c in zip(params, oracles, gs, clipped):
            p.grad[...] = g
            o.step(c)
        opt.step()
        # the clipped gradient is written back into .grad
        for p, c in zip(params, clipped):
            np.testing.assert_allclose(p.grad, c, rtol=2e-6, atol=1e-6)
    for p, o in zip(params, oracles):
        np.testing.assert_allclose(p.value, o.p, rtol=1e-4, atol=2e-5)


def test_clipnorm_is_per_tensor_on_a_model():
    # A model's tensors share one arena; clipnorm must still see each tensor.
    m = nv.Sequential([nv.layers.Dense(6), nv.layers.Dense(3)], input_dim=4)
    m.compile(optimizer=nv.optimizers.SGD(lr=0.1, clipnorm=0.5), loss="mse")
    m.build(4)
    m._bind_optimizer()
    r = np.random.default_rng(3)
    before = [p.value.astype(np.float64) for p in m.parameters()]
    gs = [r.standard_normal(p.shape).astype(np.float32) * 2 for p in m.parameters()]
    for p, g in zip(m.parameters(), gs):
        p.grad[...] = g
    m.optimizer.step()
    for p, b, g in zip(m.parameters(), before, keras_clip(gs, clipnorm=0.5)):
        assert np.linalg.norm(p.grad) == pytest.approx(0.5, rel=1e-5)
        np.testing.assert_allclose(p.value, b - 0.1 * g, rtol=1e-5, atol=1e-6)


def torch_clip_norm(gs, max_norm):
    total = np.sqrt(sum((np.asarray(g, np.float64) ** 2).sum() for g in gs))
    coef = min(max_norm / (total + 1e-6), 1.0)
    return total, [np.asarray(g, np.float64) * coef for g in gs]


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_function(max_norm):
    params = make_params()
    gs = grad_sequence(1)[0]
    for p, g in zip(params, gs):
        p.grad[...] = g
    total = nv.clip_grad_norm_(params, max_norm)
    expect_total, expect = torch_clip_norm(gs, max_norm)
    assert total == pytest.approx(expect_total, rel=1e-6)  # the norm before clipping
    for p, e in zip(params, expect):
        np.testing.assert_allclose(p.grad, e, rtol=2e-6, atol=1e-7)
    if max_norm < 1:
        assert np.sqrt(sum((p.grad.astype(np.float64) ** 2).sum() for p in params)) == pytest.approx(
            max_norm, rel=1e-5)
    # a single Parameter is accepted too
    assert nv.clip_grad_norm_(params[1], 1e9) == pytest.approx(np.linalg.norm(params[1].grad), rel=1e-6)


def test_clip_grad_value_function():
    params = make_params()
    gs = grad_sequence(1)[0]
    for p, g in zip(params, gs):
        p.grad[...] = g
    nv.clip_grad_value_(params, 0.75)
    for p, g in zip(params, gs):
        np.testing.assert_array_equal(p.grad, np.clip(g, -0.75, 0.75))
    with pytest.raises(ValueError):
        nv.clip_grad_value_(params, -1.0)
    with pytest.raises(ValueError):
        nv.clip_grad_norm_(params, -1.0)
    with pytest.raises(ValueError):
        nv.clip_grad_norm_([np.zeros(3)], 1.0)


def test_clip_functions_match_torch():
    torch = import_torch()
    gs = grad_sequence(1)[0]
    for max_norm in (0.5, 1e6):
        params = make_params()
        tparams = [torch.nn.Parameter(torch.tensor(p.value)) for p in params]
        for p, tp, g in zip(params, tparams, gs):
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        total = nv.clip_grad_norm_(params, max_norm)
        ttotal = torch.nn.utils.clip_grad_norm_(tparams, max_norm)
        assert total == pytest.approx(float(ttotal), rel=1e-5)
        for p, tp in zip(params, tparams):
            np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-5, atol=1e-7)
        nv.clip_grad_value_(params, 0.1)
        torch.nn.utils.clip_grad_value_(tparams, 0.1)
        for p, tp in zip(params, tparams):  # equal up to the ulps of the rescaling above
            np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-6, atol=0)
            assert np.abs(p.grad).max() <= 0.1


# ---------------------------------------------------------------------------
# torch.optim as a second oracle

TORCH_SHAPES = [(7, 5), (13,), (9, 8)]  # small: torch's per-call overhead dominates here


def import_torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


# torch has no FTRL and no RMSprop with Nesterov momentum
@pytest.mark.parametrize("case", [c for c in CASES if c[0] not in NOT_IN_TORCH
                                  and not (c[0] == "RMSprop" and c[1].get("nesterov"))],
                         ids=case_id)
def test_trajectory_matches_torch(case):
    torch = import_torch()
    name, hyper = case
    params = make_params(shapes=TORCH_SHAPES)
    tparams = [torch.nn.Parameter(torch.tensor(p.value.copy())) for p in params]
    opt = getattr(nv.optimizers, name)(params, **hyper)
    topt = getattr(torch.optim, name)(tparams, **hyper)
    for gs in grad_sequence(shapes=TORCH_SHAPES):
        for p, tp, g in zip(params, tparams, gs):
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.value, tp.detach().numpy(), **tolerance(name))


@pytest.mark.parametrize("case", [c for c in CASES if c[0] == "AdaBelief"], ids=case_id)
def test_adabelief_matches_the_authors_package(case):
    # Optional second oracle: the authors' adabelief-pytorch (0.2.1), when installed.
    torch = import_torch()
    adabelief_pytorch = pytest.importorskip("adabelief_pytorch")
    _, hyper = case
    params = make_params(shapes=TORCH_SHAPES)
    tparams = [torch.nn.Parameter(torch.tensor(p.value.copy())) for p in params]
    opt = nv.optimizers.AdaBelief(params, **hyper)
    topt = adabelief_pytorch.AdaBelief(tparams, **hyper, print_change_log=False)
    for gs in grad_sequence(shapes=TORCH_SHAPES):
        for p, tp, g in zip(params, tparams, gs):
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.value, tp.detach().numpy(), **tolerance("AdaBelief"))


def test_lr_change_matches_torch():
    torch = import_torch()
    params = make_params(shapes=TORCH_SHAPES)
    tparams = [torch.nn.Parameter(torch.tensor(p.value.copy())) for p in params]
    opt = nv.optimizers.SGD(params, lr=0.05, momentum=0.9, nesterov=True)
    topt = torch.optim.SGD(tparams, lr=0.05, momentum=0.9, nesterov=True)
    for t, gs in enumerate(grad_sequence(shapes=TORCH_SHAPES)):
        if t == 30:
            opt.lr = 0.01
            for group in topt.param_groups:
                group["lr"] = 0.01
        for p, tp, g in zip(params, tparams, gs):
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.value, tp.detach().numpy(), rtol=1e-4, atol=2e-5)


# ---------------------------------------------------------------------------
# State, iterations, FTRL sparsity

@pytest.mark.parametrize("case", CASES[::2] + [CASES[-1]], ids=case_id)
def test_state_dict_round_trip_continues_identically(case):
    name, hyper = case
    seq = grad_sequence()
    a = make_params()
    opt_a = getattr(nv.optimizers, name)(a, **hyper)
    for gs in seq[:30]:
        for p, g in zip(a, gs):
            p.grad[...] = g
        opt_a.step()
    state = copy.deepcopy(opt_a.state_dict())
    assert state["iterations"] == 30
    b = make_params(seed=5)  # different values, overwritten below
    for pb, pa in zip(b, a):
        pb.value = pa.value
    opt_b = getattr(nv.optimizers, name)(b, **hyper)
    opt_b.load_state_dict(state)
    assert opt_b.iterations == 30
    for gs in seq[30:]:
        for pa, pb, g in zip(a, b, gs):
            pa.grad[...] = g
            pb.grad[...] = g
        opt_a.step()
        opt_b.step()
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa.value, pb.value)
    # A fresh optimizer (no state) would have gone elsewhere, except for plain
    # SGD, which has no state.
    if state["slots"] or name == "NAdam":
        c = make_params(seed=5)
        for pc, pa in zip(c, make_params()):
            pc.value = pa.value
        opt_c = getattr(nv.optimizers, name)(c, **hyper)
        for gs in seq[:30]:
            for p, g in zip(c, gs):
                p.grad[...] = g
            opt_c.step()
        opt_c2 = getattr(nv.optimizers, name)(c, **hyper)  # re-binding restarts the state
        assert opt_c2.iterations == 0
        for gs in seq[30:]:
            for p, g in zip(c, gs):
                p.grad[...] = g
            opt_c2.step()
        assert not np.array_equal(c[0].value, a[0].value)


def test_load_state_dict_rejects_mismatch_and_changes_nothing():
    a = make_params()
    opt = nv.optimizers.Adam(a, lr=0.01)
    for p, g in zip(a, grad_sequence(1)[0]):
        p.grad[...] = g
    opt.step()
    state = opt.state_dict()
    other = nv.optimizers.Adam(make_params(), lr=0.01, amsgrad=True)
    with pytest.raises(ValueError, match="slots"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="Adam"):
        nv.optimizers.SGD(make_params(), momentum=0.9).load_state_dict(state)
    bad = copy.deepcopy(state)
    bad["slots"]["exp_avg"] = bad["slots"]["exp_avg"][:-1]
    fresh = nv.optimizers.Adam(make_params(), lr=0.01)
    with pytest.raises(ValueError, match="exp_avg"):
        fresh.load_state_dict(bad)
    assert fresh.iterations == 0 and not np.any(fresh.state_dict()["slots"]["exp_avg"])
    for key, value in (("lr", -1.0), ("lr", float("nan")), ("iterations", -3), ("iterations", 2.5),
                       ("nadam_mu_product", 0.0)):
        bad = copy.deepcopy(state)
        bad[key] = value
        with pytest.raises(ValueError):
            fresh.load_state_dict(bad)
        assert fresh.iterations == 0 and fresh.lr == pytest.approx(0.01)
        assert not np.any(fresh.state_dict()["slots"]["exp_avg"])


def test_model_save_load_continues_identically(tmp_path):
    r = np.random.default_rng(0)
    x = r.standard_normal((64, 6)).astype(np.float32)
    y = r.integers(0, 3, 64)
    for opt in (nv.optimizers.NAdam(lr=0.01, weight_decay=1e-3),
                nv.optimizers.RMSprop(lr=0.01, momentum=0.9, nesterov=True, centered=True, clipnorm=1.0),
                nv.optimizers.Ftrl(lr=0.1, l1_regularization_strength=1e-3, beta=0.1),
                nv.optimizers.SGD(lr=0.1, momentum=0.9, weight_decay=1e-2, exclude_from_weight_decay=("bias",),
                                  schedule=nv.schedules.PiecewiseConstant([3, 6], [0.1, 0.05, 0.01]))):
        nv.manual_seed(3)
        m = nv.Sequential([nv.layers.Dense(8, activation="tanh"), nv.layers.Dense(3)], input_dim=6)
        m.compile(optimizer=opt, loss="cross_entropy")
        m.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
        path = tmp_path / f"{type(opt).__name__}.nerve"
        m.save(path)
        m2 = nv.load_model(path)
        assert type(m2.optimizer) is type(opt)
        assert m2.optimizer.iterations == m.optimizer.iterations == 4
        assert m2.optimizer.get_config() == m.optimizer.get_config()
        for _ in range(5):
            m.train_step(x[:16], y[:16])
            m2.train_step(x[:16], y[:16])
            assert m2.optimizer.lr == m.optimizer.lr
        for p, q in zip(m.parameters(), m2.parameters()):
            np.testing.assert_array_equal(p.value, q.value)


def test_iterations_count_steps_not_tensors():
    params = make_params()
    opt = nv.optimizers.Adam(params)
    assert opt.iterations == 0
    for k in range(7):
        opt.step()
    assert opt.iterations == 7


def test_ftrl_strong_l1_gives_exact_zeros():
    params = make_params()
    opt = nv.optimizers.Ftrl(params, lr=0.1, l1_regularization_strength=1e6)
    for gs in grad_sequence(10):
        for p, g in zip(params, gs):
            p.grad[...] = g
        opt.step()
        for p in params:
            assert np.all(p.value == 0.0) and not np.any(np.signbit(p.value))
    # moderate L1: a mix of exact zeros and non-zeros, matching the oracle
    params = make_params()
    oracles = [Oracle("Ftrl", dict(lr=0.1, l1_regularization_strength=2.0), p.value) for p in params]
    opt = nv.optimizers.Ftrl(params, lr=0.1, l1_regularization_strength=2.0)
    for gs in grad_sequence(30):
        for p, o, g in zip(params, oracles, gs):
            p.grad[...] = g
            o.step(g)
        opt.step()
    zeros = sum(int((p.value == 0).sum()) for p in params)
    total = sum(p.size for p in params)
    assert 0 < zeros < total
    for p, o in zip(params, oracles):
        np.testing.assert_array_equal(p.value == 0, o.p == 0)


# ---------------------------------------------------------------------------
# Validation

@pytest.mark.parametrize("name,kw", [
    ("SGD", dict(lr=-0.1)),
    ("SGD", dict(nesterov=True)),
    ("SGD", dict(nesterov=True, momentum=0.9, dampening=0.1)),
    ("SGD", dict(momentum=-0.5)),
    ("SGD", dict(weight_decay=-1e-3)),
    ("SGD", dict(lr=float("nan"))),
    ("SGD", dict(lr="0.1")),
    ("Adam", dict(betas=(1.0, 0.999))),
    ("Adam", dict(betas=(0.9, -0.1))),
    ("Adam", dict(betas=(0.9,))),
    ("Adam", dict(eps=-1e-8)),
    ("AdamW", dict(betas=(0.9, 1.5))),
    ("Adamax", dict(betas=(-0.1, 0.9))),
    ("NAdam", dict(momentum_decay=-1.0)),
    ("Adagrad", dict(lr_decay=-0.1)),
    ("Adagrad", dict(initial_accumulator_value=-1.0)),
    ("RMSprop", dict(alpha=1.5)),
    ("RMSprop", dict(nesterov=True)),
    ("Adadelta", dict(rho=1.1)),
    ("Ftrl", dict(lr=0.0)),
    ("Ftrl", dict(learning_rate_power=0.5)),
    ("Ftrl", dict(l1_regularization_strength=-1.0)),
    ("Ftrl", dict(l2_regularization_strength=-1.0)),
    ("Ftrl", dict(initial_accumulator_value=-0.1)),
    ("Ftrl", dict(beta=-1.0)),
    ("Adam", dict(clipnorm=0.0)),
    ("Adam", dict(clipvalue=-1.0)),
    ("Adam", dict(global_clipnorm=float("inf"))),
    ("Adam", dict(schedule=0.1)),
    ("SGD", dict(exclude_from_weight_decay=[1, 2])),
])
def test_bad_hyper_parameters_raise(name, kw):
    with pytest.raises(ValueError):
        getattr(nv.optimizers, name)(make_params(), **kw)


def test_bad_lr_assignment_changes_nothing():
    params = make_params()
    opt = nv.optimizers.SGD(params, lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    assert opt.lr == pytest.approx(0.1)
    with pytest.raises(ValueError):
        nv.optimizers.SGD(params, lr=0.1).load_state_dict({"class": "SGD"})
    with pytest.raises(ValueError):
        nv.optimizers.SGD([np.zeros(3)])


# ---------------------------------------------------------------------------
# Excluding biases from weight decay

@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_exclude_biases_from_weight_decay_standalone(name):
    w = nv.Parameter(np.ones((3, 4), np.float32), kind="kernel")
    b = nv.Parameter(np.ones(4, np.float32), kind="bias")
    opt = getattr(nv.optimizers, name)([w, b], lr=0.1, weight_decay=0.5, exclude_from_weight_decay=("bias",))
    opt.step()  # zero gradients: only decay can move anything
    np.testing.assert_array_equal(b.value, 1.0)
    assert np.all(w.value < 1.0)
    if name != "Adam":  # Adam's L2 decay goes through the normalised update
        np.testing.assert_allclose(w.value, 1.0 - 0.1 * 0.5 * (1.0 if name == "AdamW" else 1.0), rtol=1e-6)
    # a predicate works too
    b2 = nv.Parameter(np.ones(4, np.float32), kind="bias")
    opt = getattr(nv.optimizers, name)([b2], lr=0.1, weight_decay=0.5,
                                       exclude_from_weight_decay=lambda p: p.kind == "bias")
    opt.step()
    np.testing.assert_array_equal(b2.value, 1.0)


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_exclude_biases_from_weight_decay_on_a_model(name):
    r = np.random.default_rng(0)
    x = r.standard_normal((32, 5)).astype(np.float32)
    y = r.integers(0, 3, 32)

    def trained(**kw):
        nv.manual_seed(11)
        m = nv.Sequential([nv.layers.Dense(7, activation="relu"), nv.layers.Dense(3)], input_dim=5)
        m.compile(optimizer=getattr(nv.optimizers, name)(lr=0.1, **kw), loss="cross_entropy")
        m.build(5)
        for p in m.parameters():  # biases start at zero, where decay would do nothing
            if p.kind == "bias":
                p.value = np.linspace(-1, 1, p.size)
        m.train_step(x, y)  # one step: every variant sees the same gradients
        return m

    excl = trained(weight_decay=0.5, exclude_from_weight_decay=("bias",))
    decay = trained(weight_decay=0.5)
    plain = trained(weight_decay=0.0)
    for pe, pd, pp in zip(excl.parameters(), decay.parameters(), plain.parameters()):
        if pe.kind == "bias":
            np.testing.assert_array_equal(pe.value, pp.value)
            assert not np.allclose(pe.value, pd.value)
        else:
            np.testing.assert_array_equal(pe.value, pd.value)
            assert not np.allclose(pe.value, pp.value)
    assert excl.optimizer.get_config()["exclude_from_weight_decay"] == ["bias"]


@pytest.mark.parametrize("name,hyper", [("Adam", dict(lr=0.01, global_clipnorm=50.0, clipnorm=30.0)),
                                        ("Ftrl", dict(lr=0.1, l1_regularization_strength=0.5))])
def test_results_do_not_depend_on_thread_count(name, hyper):
    shapes = [(300, 400), (70001,)]  # several kernel chunks per tensor
    seq = grad_sequence(5, shapes=shapes)
    before = nv.get_num_threads()
    finals = []
    try:
        for threads in (1, 2):
            nv.set_num_threads(threads)
            params = make_params(shapes=shapes)
            opt = getattr(nv.optimizers, name)(params, **hyper)
            for gs in seq:
                for p, g in zip(params, gs):
                    p.grad[...] = g
                opt.step()
            finals.append([p.value.copy() for p in params])
    finally:
        nv.set_num_threads(before)
    for a, b in zip(*finals):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# The table: every class, its signature and its validation come from the C++
# policies (cpp/src/optim/), one unit per optimizer.

def test_classes_and_signatures_come_from_the_table():
    import inspect
    table = nv._core.optimizer_table()
    assert [r["name"] for r in table][:len(DEFAULTS)] == list(DEFAULTS)
    for name, defaults in DEFAULTS.items():
        sig = inspect.signature(getattr(nv.optimizers, name))
        params = list(sig.parameters.values())
        assert params[0].name == "params" and params[0].default is None
        positional = {p.name: p.default for p in params[1:] if p.kind == p.POSITIONAL_OR_KEYWORD}
        assert positional == defaults, name  # names, order-independent values; order below
        assert list(positional) == list(defaults), name
        keyword_only = [p.name for p in params if p.kind == p.KEYWORD_ONLY]
        assert keyword_only == ["clipnorm", "clipvalue", "global_clipnorm", "schedule", "exclude_from_weight_decay"]
        assert getattr(nv.optimizers, name).__doc__.strip()
        opt = getattr(nv.optimizers, name)()
        assert opt.get_config() == defaults, name
        # Positional arguments in the documented order.
        args = [v for v in defaults.values()]
        assert getattr(nv.optimizers, name)(None, *args).get_config() == defaults


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_every_float_hyper_parameter_must_be_finite_float32(name):
    cls = getattr(nv.optimizers, name)
    for arg, default in DEFAULTS[name].items():
        if isinstance(default, bool):
            with pytest.raises(ValueError, match=arg):
                cls(**{arg: 1.5})
            continue
        big = (1e39, 0.999) if isinstance(default, tuple) else 1e39
        with pytest.raises(ValueError, match="float32|must be" if arg != "lr" else "lr"):
            cls(**{arg: big})
        for bad in (float("inf"), float("nan")):
            with pytest.raises(ValueError):
                cls(**{arg: (bad, 0.9) if isinstance(default, tuple) else bad})
    with pytest.raises(ValueError, match=r"Invalid lr value: 1e\+39 \(must be finite and within the float32 range"):
        nv.optimizers.Adam(lr=1e39)
    # Assignment is checked the same way and changes nothing.
    opt = cls(make_params(), lr=0.01)
    with pytest.raises(ValueError, match="float32"):
        opt.lr = 1e39
    assert opt.lr == pytest.approx(0.01)


def test_state_keys_from_older_files_still_load():
    # Files written before the table carried nadam_mu_product = 1.0 for every
    # optimizer: still accepted where it is not the optimizer's own state.
    a = make_params()
    opt = nv.optimizers.Adam(a, lr=0.01)
    for p, g in zip(a, grad_sequence(1)[0]):
        p.grad[...] = g
    opt.step()
    state = opt.state_dict()
    assert "nadam_mu_product" not in state
    old = {**state, "nadam_mu_product": 1.0}
    fresh = nv.optimizers.Adam(make_params(), lr=0.01)
    fresh.load_state_dict(old)
    assert fresh.iterations == 1
    np.testing.assert_array_equal(fresh.state_dict()["slots"]["exp_avg"], state["slots"]["exp_avg"])
    nadam = nv.optimizers.NAdam(make_params())
    assert nadam.state_dict()["nadam_mu_product"] == 1.0
