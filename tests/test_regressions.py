"""Regression tests for bugs found in review: each reproduces a user-visible failure."""
import json
import zipfile

import numpy as np
import pytest

import nerve as nv

X = np.random.default_rng(0).random((16, 4)).astype(np.float32)
Y = np.random.default_rng(1).integers(0, 3, 16)


def two_layer(opt="adam", loss="cross_entropy", metrics=None, **dense):
    nv.manual_seed(0)
    m = nv.Sequential([nv.layers.Dense(5, activation="tanh", **dense), nv.layers.Dense(3)], input_dim=4)
    m.compile(opt, loss, metrics)
    return m


@pytest.mark.parametrize("loss", ["cross_entropy", "focal"])
def test_softmax_losses_refuse_one_output_column(loss):
    with pytest.raises(ValueError, match="at least 2 output columns.*binary_cross_entropy_with_logits"):
        nv.losses.get(loss).forward(np.random.rand(5, 1), np.array([0, 1, 1, 0, 1]))
    m = nv.Sequential([nv.layers.Dense(1)], input_dim=4)
    m.compile("sgd", loss)
    with pytest.raises(ValueError, match="at least 2 output columns"):
        m.train_step(X, (X[:, 0] > 0.5).astype(np.int64))


def test_freeze_then_save_loads(tmp_path):
    m = two_layer()
    m.train_step(X, Y)
    m.layers[0].trainable = False
    m.save(tmp_path / "f.nerve")
    m2 = nv.load_model(tmp_path / "f.nerve")
    assert not m2.layers[0].trainable
    np.testing.assert_array_equal(m2.predict(X), m.predict(X))
    assert m2.train_step(X, Y) == m.train_step(X, Y)


def test_freezing_keeps_optimizer_state_and_step_count():
    sched = nv.schedules.ExponentialDecay(initial=0.1, decay_steps=1, decay_rate=0.5)
    m = two_layer(opt=nv.optimizers.Adam(schedule=sched))
    for _ in range(5):
        m.train_step(X, Y)
    head = m.layers[1].parameters()
    before = {id(p): [view[j].copy() for view in m.optimizer._slot_views()]
              for j, p in enumerate(m.optimizer.params) if any(p is h for h in head)}
    m.layers[0].trainable = False
    m._bind_optimizer()
    # The head's Adam moments and the step count survive the rebinding ...
    assert m.optimizer.iterations == 5
    views = m.optimizer._slot_views()
    assert [id(p) for p in m.optimizer.params] == [id(p) for p in head]
    for j, p in enumerate(m.optimizer.params):
        for k, view in enumerate(views):
            np.testing.assert_array_equal(view[j], before[id(p)][k])
    # ... so the schedule continues where it was (step t uses schedule(t)).
    m.train_step(X, Y)
    assert m.optimizer.iterations == 6 and m.optimizer.lr == pytest.approx(sched(5))
    m.compile(m.optimizer, "cross_entropy", ["accuracy"])  # recompiling keeps the state too
    assert m.optimizer.iterations == 6


@pytest.mark.parametrize("dense", [{"kernel_regularizer": nv.regularizers.L1L2(0.01, 0.1)},
                                   {"kernel_constraint": nv.constraints.MaxNorm(0.3)}])
def test_manual_loop_equals_train_step_with_penalties_and_constraints(dense):
    a = two_layer(opt=nv.optimizers.SGD(lr=0.5), **dense)
    b = two_layer(opt=nv.optimizers.SGD(lr=0.5), **dense)
    lf = nv.losses.get("cross_entropy")
    for _ in range(3):
        a.train_step(X, Y)
        out = b.forward(X, training=True)
        b.backward(lf.backward(out, Y))
        b.optimizer.step()
        b.optimizer.zero_grad()
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.value, pb.value)


def test_manual_loop_respects_freezing():
    m = two_layer(opt=nv.optimizers.AdamW(weight_decay=0.5))
    lf = nv.losses.get("cross_entropy")
    m.train_step(X, Y)
    m.layers[0].trainable = False
    frozen = m.layers[0].kernel.value.copy()
    out = m.forward(X, training=True)
    m.backward(lf.backward(out, Y))
    m.optimizer.step()
    np.testing.assert_array_equal(m.layers[0].kernel.value, frozen)


def test_accuracy_of_one_logit_column_uses_zero_threshold():
    m = nv.Sequential([nv.layers.Dense(1, kernel_initializer="zeros",
                                       bias_initializer=nv.initializers.get("constant", value=0.3))], input_dim=2)
    m.compile("sgd", "binary_cross_entropy_with_logits", ["accuracy"])
    x = np.zeros((4, 2), np.float32)
    assert m.evaluate(x, np.array([1, 1, 1, 1]))["accuracy"] == 1.0
    hist = m.fit(x, np.ones((4, 1), np.float32), epochs=1, batch_size=4, verbose=0)
    assert hist.history["accuracy"][0] == 1.0


def test_distillation_with_accuracy_and_validation_split():
    m = nv.Sequential([nv.layers.Dense(3)], input_dim=4)
    m.compile("adam", "distillation", ["accuracy"])
    t = np.random.default_rng(2).random((16, 3)).astype(np.float32)
    logs = m.evaluate(X, (t, Y))
    assert 0.0 <= logs["accuracy"] <= 1.0
    hist = m.fit(X, [t, Y], validation_split=0.25, epochs=1, verbose=0)
    assert "val_accuracy" in hist.history


def test_residual_copy_keeps_weights():
    nv.manual_seed(0)
    r = nv.layers.Residual([nv.layers.Dense(4, activation="tanh"), nv.layers.Dense(4)])
    y0 = r.forward(X)
    np.testing.assert_array_equal(r.copy().forward(X), y0)
    m = nv.Sequential([r.copy()], input_dim=4)
    np.testing.assert_array_equal(m.predict(X), y0)


def _rewrite_config(path, mutate):
    with np.load(path, allow_pickle=False) as f:
        cfg = json.loads(f["config"].tobytes())
        members = {n: f[n] for n in f.files}
    mutate(cfg)
    members["config"] = np.frombuffer(json.dumps(cfg).encode(), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **members)


def test_hostile_sizes_fail_before_allocating(tmp_path):
    m = two_layer()
    path = tmp_path / "m.nerve"
    m.save(path)
    _rewrite_config(path, lambda c: c["model"]["layers"][0]["config"].__setitem__("units", 2 ** 31 + 5))
    # Refused by the memory budget, before the parameter count is even compared.
    with pytest.raises(ValueError, match="memory budget"):
        nv.load_model(path)


def test_deeply_nested_config_is_a_value_error(tmp_path):
    m = two_layer()
    path = tmp_path / "m.nerve"
    m.save(path)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    deep = "[" * 100000 + "]" * 100000
    import io
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(deep.encode(), dtype=np.uint8))
    members["config.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    with pytest.raises(ValueError):
        nv.load_model(path)


def test_early_stopping_restores_batch_norm_statistics():
    nv.manual_seed(0)
    m = nv.Sequential([nv.layers.Dense(6), nv.layers.BatchNorm(), nv.layers.Dense(3)], input_dim=4)
    m.compile("adam", "cross_entropy")
    w = m.get_weights()
    assert len(w) == len(m.parameters()) + 3  # running mean, variance, batches tracked
    m.fit(X, Y, epochs=2, batch_size=8, verbose=0)
    m.set_weights(w)
    np.testing.assert_array_equal(m.layers[1].running_mean, w[-3])
    np.testing.assert_array_equal(m.layers[1].running_var, w[-2])


def test_nan_targets_rejected_in_evaluate_and_validation():
    m = two_layer(loss="mse")
    y = np.random.default_rng(3).random((16, 3)).astype(np.float32)
    bad = y.copy()
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="row 5"):
        m.evaluate(X, bad)
    with pytest.raises(ValueError, match="validation y"):
        m.fit(X, y, validation_data=(X, bad), epochs=1, verbose=0)


def test_duplicate_parameters_rejected():
    p = nv.Parameter(np.ones(3))
    with pytest.raises(ValueError, match="more than once"):
        nv.optimizers.Adam([p, p])


def test_activation_layer_name_is_the_activation():
    layer = nv.layers.Activation(name="elu", alpha=0.5)
    assert layer.activation.name == "elu" and layer.activation.params == {"alpha": 0.5}
    named = nv.layers.Activation("tanh", layer_name="squash")
    assert named.name == "squash"
    again = nv.layers.Activation.from_config(named.get_config())
    assert again.name == "squash" and again.activation.name == "tanh"


@pytest.mark.parametrize("bad", [X.astype(np.complex64), X.astype(object), X.astype(str)])
def test_layer_forward_rejects_non_real_input(bad):
    with pytest.raises(ValueError, match="real numeric"):
        nv.layers.Dense(2).forward(bad)


@pytest.mark.parametrize("make", [lambda: nv.optimizers.Ftrl(weight_decay=0.1),
                                  lambda: nv.optimizers.Adam(lrr=0.1),
                                  lambda: nv.optimizers.get("sgd", momentun=0.9)])
def test_unknown_optimizer_parameter_is_a_value_error_with_a_suggestion(make):
    # These raised KeyError from the field table.
    with pytest.raises(ValueError, match="unknown parameter"):
        make()


def test_gelu_of_an_element_does_not_depend_on_its_neighbours():
    # The AVX2 gelu (forward and backward) recomputes only the lanes outside
    # its fast range, so an element's result is the same alone, beside
    # |x| > 13 or NaN, or at a ragged end (masked last vector).
    g = nv.activations.get("gelu")
    x = (np.random.default_rng(1).standard_normal(1003) * 5).astype(np.float32)
    x[::7] = 40.0
    x[3] = np.nan
    x[10] = -14.0
    y = g.forward(x.reshape(1, -1)).ravel()
    alone = np.array([g.forward(np.array([[v]], np.float32))[0, 0] for v in x])
    assert np.array_equal(y, alone, equal_nan=True)
    dy = np.linspace(-2, 2, x.size).astype(np.float32)
    dx = g.backward(x.reshape(1, -1), dy.reshape(1, -1)).ravel()
    dx_alone = np.array([g.backward(np.array([[v]], np.float32), np.array([[d]], np.float32))[0, 0]
                         for v, d in zip(x, dy)])
    assert np.array_equal(dx, dx_alone, equal_nan=True)


def test_bce_float_logs_match_float64_at_the_edges():
    # The SIMD float logs replaced std::log in double: zeros, ones, subnormal
    # and tiny probabilities must still give PyTorch's clamped values.
    p = np.array([[0.0, 1.0, 1e-45, 1e-40, 1e-30, 0.5, 1 - 2**-24, 0.25, 0.9999, 3e-8]], np.float32)
    t = np.array([[1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.3, 1.0, 0.0]], np.float32)
    x, y = p.astype(np.float64), t.astype(np.float64)
    with np.errstate(divide="ignore"):
        lx = np.maximum(np.log(x), -100.0)
        l1x = np.maximum(np.log1p(-x), -100.0)
    ref = np.mean(-(y * lx + (1 - y) * l1x))
    got, grad = nv.losses.get("binary_cross_entropy").forward_backward(p, t)
    assert got == pytest.approx(ref, rel=1e-6)
    ref_grad = (x - y) / np.maximum(x * (1 - x), 1e-12) / p.size
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5)


def test_log_softmax_keeps_relative_precision_where_one_logit_dominates():
    # y at the maximum is -log1p(rest) ~ -rest; log of the summed exps in
    # double rounded it to 0 (rest ~ 1e-17 here) or lost digits.
    x = np.array([[40.0, 0.0, 1.5, -3.0], [30.0, 10.0, 10.0, 9.0], [5.0, 5.0, -80.0, 1.0]], np.float32)
    y = nv.activations.get("log_softmax").forward(x)
    xd = x.astype(np.float64)
    m = xd.max(axis=1, keepdims=True)
    d = xd - m
    at_max = d == 0
    rest = np.where(at_max, 0.0, np.exp(d)).sum(axis=1, keepdims=True)
    ref = d - np.log1p((at_max.sum(axis=1, keepdims=True) - 1) + rest)
    assert y[0, 0] < 0.0  # not rounded to 0
    np.testing.assert_allclose(y, ref, rtol=4 * 2.0**-24, atol=0)


@pytest.mark.parametrize("threads", [1, 2])
def test_finiteness_check_finds_the_cell_in_any_chunk(threads):
    # The input check runs in 32K-float chunks shared over the threads: a bad
    # value in a later chunk (and one in the first) is still found and named.
    before = nv.get_num_threads()
    try:
        nv.set_num_threads(threads)
        m = nv.Sequential([nv.layers.Dense(4)], input_dim=784)
        m.compile(optimizer="sgd", loss="mse")
        x = np.zeros((200, 784), np.float32)  # 156,800 floats: 5 chunks
        y = np.zeros((200, 4), np.float32)
        m.train_step(x, y)
        for row, col in [(170, 5), (0, 0), (199, 783)]:
            bad = x.copy()
            bad[row, col] = np.inf
            with pytest.raises(ValueError, match=f"NaN or Inf at row {row}, column {col}"):
                m.train_step(bad, y)
    finally:
        nv.set_num_threads(before)


@pytest.mark.parametrize("name,params,soft", [("cross_entropy", {}, False),
                                              ("cross_entropy", {"label_smoothing": 0.1}, False),
                                              ("cross_entropy", {}, True),
                                              ("focal", {"gamma": 2.0}, False)])
@pytest.mark.parametrize("rows", [512, 2048])
def test_row_wise_losses_do_not_depend_on_threads(name, params, soft, rows):
    # Row-wise losses on 10 classes now split over threads from 512 rows (a
    # row's fixed cost counts when deciding); chunks are fixed by the row
    # count, so the value and gradient keep their bits on 1 and 2 threads.
    r = np.random.default_rng(rows)
    pred = r.standard_normal((rows, 10)).astype(np.float32) * 3
    target = r.dirichlet(np.ones(10), rows).astype(np.float32) if soft else r.integers(0, 10, rows)
    loss = nv.losses.get(name, **params)
    before = nv.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            nv.set_num_threads(threads)
            out.append(loss.forward_backward(pred, target))
    finally:
        nv.set_num_threads(before)
    (v1, g1), (v2, g2) = out
    assert np.float64(v1).tobytes() == np.float64(v2).tobytes()
    assert np.array_equal(g1, g2) and np.any(g1 != 0)


@pytest.mark.parametrize("batch", [3, 40, 512])
def test_gelu_gradient_in_place_beyond_its_fast_range(batch):
    # Dense's backward makes dZ in dY's own buffer. The erf GELU's vector
    # kernel hands lanes with |z| > 13 to the scalar formula, which read dY
    # after the vector store had overwritten it: those units got NaN or huge
    # gradients (dW, db, dX) instead of dY * 1 or dY * 0.
    r = np.random.default_rng(0)
    x = (20 * r.standard_normal((batch, 30))).astype(np.float32)
    m = nv.Sequential([nv.layers.Dense(64, activation="gelu")], input_dim=30)
    m.build(30)
    layer = m.layers[0]
    w, b = layer.kernel.value, layer.bias.value
    z = x.astype(np.float64) @ w + b
    assert (np.abs(z) > 13).mean() > 0.3
    m.forward(x, training=True)
    dy = r.standard_normal((batch, 64)).astype(np.float32)
    dx = m.backward(dy, return_input_grad=True)
    from math import erf
    phi = 0.5 * (1 + np.vectorize(erf)(z / np.sqrt(2)))
    dz = dy * (phi + z * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi))
    gw, gb = layer.kernel.grad, layer.bias.grad
    np.testing.assert_allclose(gb, dz.sum(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, x.astype(np.float64).T @ dz, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(dx, dz @ w.T, rtol=1e-4, atol=1e-3)
