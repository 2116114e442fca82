"""Sequences: Embedding, SimpleRNN, LSTM and GRU (docs/sequences.md).

Oracles: a float64 numpy implementation of each cell written here (forward),
whose central differences check every gradient nerve computes (inputs,
kernel, recurrent kernel, biases); torch.nn.RNN / LSTM / GRU as a second
oracle when torch is installed. Repeated at every CPU level (conftest.py).
"""
import io

import numpy as np
import pytest

import nerve as nv
from conftest import close_to_scale, rng

L = nv.layers
CELLS = {"rnn": L.SimpleRNN, "lstm": L.LSTM, "gru": L.GRU}


# -- the numpy oracle ------------------------------------------------------------------------


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def np_cell_run(kind, x, W, Uh, b, rb=None, reverse=False, act="tanh"):
    """float64 states (B, T, U) of one direction, PyTorch's equations."""
    B, T, _ = x.shape
    U = Uh.shape[0]
    h = np.zeros((B, U))
    c = np.zeros((B, U))
    out = np.zeros((B, T, U))
    for s in range(T):
        t = T - 1 - s if reverse else s
        xt = x[:, t] @ W + b
        if kind == "rnn":
            a = xt + h @ Uh
            h = np.tanh(a) if act == "tanh" else np.maximum(a, 0)
        elif kind == "lstm":
            a = xt + h @ Uh
            i, f, g, o = _sig(a[:, :U]), _sig(a[:, U:2 * U]), np.tanh(a[:, 2 * U:3 * U]), _sig(a[:, 3 * U:])
            c = f * c + i * g
            h = o * np.tanh(c)
        else:
            hh = h @ Uh + rb
            r = _sig(xt[:, :U] + hh[:, :U])
            z = _sig(xt[:, U:2 * U] + hh[:, U:2 * U])
            n = np.tanh(xt[:, 2 * U:] + r * hh[:, 2 * U:])
            h = (1 - z) * n + z * h
        out[:, t] = h
    return out


def np_layer(layer, x, weights):
    """The layer's output from float64 copies of its weights (dict name -> array)."""
    kind = {"SimpleRNN": "rnn", "LSTM": "lstm", "GRU": "gru"}[type(layer).__name__]
    act = getattr(layer, "activation_name", "tanh")
    outs, lasts = [], []
    for d, sfx in enumerate(["", "_reverse"][: 2 if layer.bidirectional else 1]):
        seq = np_cell_run(kind, x, weights["kernel" + sfx], weights["recurrent_kernel" + sfx], weights["bias" + sfx],
                          weights.get("recurrent_bias" + sfx), reverse=d == 1, act=act)
        outs.append(seq)
        lasts.append(seq[:, 0] if d == 1 else seq[:, -1])
    return np.concatenate(outs, axis=2) if layer.return_sequences else np.concatenate(lasts, axis=1)


def np_model(model, x, weights):
    """Oracle of a Sequential made of recurrent layers and Dense layers (identity or tanh)."""
    h = x
    for layer, w in zip(model.layers, weights):
        if isinstance(layer, L.Dense):
            h = h @ w["kernel"] + w["bias"]
            if layer.activation.name == "tanh":
                h = np.tanh(h)
        else:
            h = np_layer(layer, h, w)
    return h


def weights64(model):
    return [{p.name: p.value.astype(np.float64) for p in layer.parameters()} for layer in model.layers]


def numeric_grads(model, x, dy, eps=1e-6):
    """Central differences of sum(dy * oracle(x)) in float64, for x and every parameter."""
    base = weights64(model)

    def f(xx, ww):
        return float((np_model(model, xx, ww) * dy).sum())

    x64 = x.astype(np.float64)
    gx = np.zeros_like(x64)
    for idx in np.ndindex(x64.shape):
        up, dn = x64.copy(), x64.copy()
        up[idx] += eps
        dn[idx] -= eps
        gx[idx] = (f(up, base) - f(dn, base)) / (2 * eps)
    gp = []
    for li, layer in enumerate(model.layers):
        for p in layer.parameters():
            g = np.zeros(p.shape)
            for idx in np.ndindex(p.shape):
                ww = [dict(w) for w in base]
                arr = base[li][p.name].copy()
                arr[idx] += eps
                ww[li][p.name] = arr
                up = f(x64, ww)
                arr = base[li][p.name].copy()
                arr[idx] -= eps
                ww[li][p.name] = arr
                g[idx] = (up - f(x64, ww)) / (2 * eps)
            gp.append(g)
    return gx, gp


def analytic_grads(model, x, dy):
    y = model.forward(x, training=True)
    for p in model.parameters():
        p.grad[...] = 0
    dx = model.backward(dy, return_input_grad=True)
    return y, dx, [p.grad.copy() for p in model.parameters()]


CASES = [(kind, rs, bi) for kind in CELLS for rs in (False, True) for bi in (False, True)]


@pytest.mark.parametrize("kind,return_sequences,bidirectional", CASES)
@pytest.mark.parametrize("batch,steps", [(2, 3), (1, 1), (3, 1), (1, 4)])
def test_forward_and_every_gradient_match_the_numpy_oracle(kind, return_sequences, bidirectional, batch, steps):
    F, U = 3, 4
    layer = CELLS[kind](U, return_sequences=return_sequences, bidirectional=bidirectional)
    m = nv.Sequential([layer], input_dim=F)
    for p in m.parameters():  # biases away from 0 so every term matters
        p.value[...] = rng(len(p.name)).uniform(-0.6, 0.6, p.shape)
    x = rng(1).standard_normal((batch, steps, F)).astype(np.float32)
    y = m.forward(x, training=False)
    dy = rng(2).standard_normal(y.shape).astype(np.float32)
    y, dx, grads = analytic_grads(m, x, dy)
    close_to_scale(y, np_model(m, x.astype(np.float64), weights64(m)), 2e-6)
    gx, gp = numeric_grads(m, x, dy.astype(np.float64))
    close_to_scale(dx, gx, 1e-4)
    for p, got, want in zip(m.parameters(), grads, gp):
        assert got.shape == want.shape, p.name
        close_to_scale(got, want, 1e-4)


def test_relu_rnn_and_stacked_dense_match_the_numpy_oracle():
    m = nv.Sequential([L.SimpleRNN(5, activation="relu", return_sequences=True),
                       L.LSTM(4, return_sequences=True), L.Dense(3, activation="tanh"), L.GRU(2)], input_dim=2)
    x = rng(3).standard_normal((2, 4, 2)).astype(np.float32)
    dy = rng(4).standard_normal((2, 2)).astype(np.float32)
    y, dx, grads = analytic_grads(m, x, dy)
    close_to_scale(y, np_model(m, x.astype(np.float64), weights64(m)), 2e-6)
    gx, gp = numeric_grads(m, x, dy.astype(np.float64))
    close_to_scale(dx, gx, 1e-4)
    for got, want in zip(grads, gp):
        close_to_scale(got, want, 1e-4)


# -- torch as a second oracle --------------------------------------------------------------------

TORCH_CASES = [(kind, rs, bi, layers) for kind in CELLS for rs in (False, True) for bi in (False, True)
               for layers in (1, 2)]


def _torch_twin(torch, model, kind, layers, bidirectional):
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    first = model.layers[0]
    t = cls(first.input_dim, first.units, num_layers=layers, batch_first=True, bidirectional=bidirectional,
            dtype=torch.float64)
    with torch.no_grad():
        for li, layer in enumerate(model.layers):
            for sfx in ["", "_reverse"][: 2 if bidirectional else 1]:
                get = lambda name: torch.tensor(getattr(layer, name + sfx).value.astype(np.float64))
                getattr(t, f"weight_ih_l{li}{sfx}").copy_(get("kernel").T)
                getattr(t, f"weight_hh_l{li}{sfx}").copy_(get("recurrent_kernel").T)
                getattr(t, f"bias_ih_l{li}{sfx}").copy_(get("bias"))
                if kind == "gru":
                    getattr(t, f"bias_hh_l{li}{sfx}").copy_(get("recurrent_bias"))
                else:
                    getattr(t, f"bias_hh_l{li}{sfx}").zero_()
    return t


@pytest.mark.parametrize("kind,return_sequences,bidirectional,layers", TORCH_CASES)
@pytest.mark.parametrize("batch,steps", [(1, 1), (4, 7), (1, 9), (16, 3)])
def test_matches_torch(kind, return_sequences, bidirectional, layers, batch, steps):
    torch = pytest.importorskip("torch")
    F, U = 5, 6
    stack = [CELLS[kind](U, return_sequences=True, bidirectional=bidirectional) for _ in range(layers - 1)]
    stack.append(CELLS[kind](U, return_sequences=return_sequences, bidirectional=bidirectional))
    m = nv.Sequential(stack, input_dim=F)
    t = _torch_twin(torch, m, kind, layers, bidirectional)
    x = rng(5).standard_normal((batch, steps, F)).astype(np.float32)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    out, hn = t(xt)
    hn = hn[0] if kind == "lstm" else hn
    if return_sequences:
        ref = out
    else:  # h_n of the last layer, directions concatenated (forward first)
        dirs = 2 if bidirectional else 1
        ref = torch.cat([hn[(layers - 1) * dirs + d] for d in range(dirs)], dim=1)
    dy = rng(6).standard_normal(tuple(ref.shape)).astype(np.float32)
    y, dx, grads = analytic_grads(m, x, dy)
    ref.backward(torch.tensor(dy.astype(np.float64)))
    close_to_scale(y, ref.detach().numpy(), 1e-5)
    close_to_scale(dx, xt.grad.numpy(), 1e-5)
    params = dict(zip([(li, p.name) for li, l in enumerate(m.layers) for p in l.parameters()], grads))
    for li in range(layers):
        for sfx in ["", "_reverse"][: 2 if bidirectional else 1]:
            close_to_scale(params[(li, "kernel" + sfx)], getattr(t, f"weight_ih_l{li}{sfx}").grad.numpy().T, 1e-5)
            close_to_scale(params[(li, "recurrent_kernel" + sfx)],
                           getattr(t, f"weight_hh_l{li}{sfx}").grad.numpy().T, 1e-5)
            close_to_scale(params[(li, "bias" + sfx)], getattr(t, f"bias_ih_l{li}{sfx}").grad.numpy(), 1e-5)
            if kind == "gru":
                close_to_scale(params[(li, "recurrent_bias" + sfx)],
                               getattr(t, f"bias_hh_l{li}{sfx}").grad.numpy(), 1e-5)


def test_embedding_matches_torch():
    torch = pytest.importorskip("torch")
    emb = L.Embedding(11, 4)
    m = nv.Sequential([emb, L.LSTM(3, return_sequences=True)])
    ids = rng(7).integers(0, 11, (3, 5))
    y = m.forward(ids, training=True)
    te = torch.nn.Embedding(11, 4, dtype=torch.float64)
    tl = torch.nn.LSTM(4, 3, batch_first=True, dtype=torch.float64)
    lstm = m.layers[1]
    with torch.no_grad():
        te.weight.copy_(torch.tensor(emb.embeddings.value.astype(np.float64)))
        tl.weight_ih_l0.copy_(torch.tensor(lstm.kernel.value.T.astype(np.float64)))
        tl.weight_hh_l0.copy_(torch.tensor(lstm.recurrent_kernel.value.T.astype(np.float64)))
        tl.bias_ih_l0.copy_(torch.tensor(lstm.bias.value.astype(np.float64)))
        tl.bias_hh_l0.zero_()
    ref, _ = tl(te(torch.tensor(ids)))
    dy = rng(8).standard_normal(y.shape).astype(np.float32)
    for p in m.parameters():
        p.grad[...] = 0
    dx = m.backward(dy, return_input_grad=True)
    ref.backward(torch.tensor(dy.astype(np.float64)))
    close_to_scale(y, ref.detach().numpy(), 1e-5)
    close_to_scale(emb.embeddings.grad, te.weight.grad.numpy(), 1e-5)
    assert dx.shape == ids.shape and not dx.any()


# -- defaults, plumbing and the rest of the library ---------------------------------------------


def test_parameter_shapes_layout_and_default_init():
    lstm, gru, rnn = L.LSTM(8), L.GRU(8, bidirectional=True), L.SimpleRNN(8)
    nv.Sequential([lstm], input_dim=3), nv.Sequential([gru], input_dim=3), nv.Sequential([rnn], input_dim=3)
    assert [(p.name, p.shape) for p in lstm.parameters()] == [
        ("kernel", (3, 32)), ("recurrent_kernel", (8, 32)), ("bias", (32,))]
    assert [p.name for p in gru.parameters()] == [
        "kernel", "recurrent_kernel", "bias", "recurrent_bias",
        "kernel_reverse", "recurrent_kernel_reverse", "bias_reverse", "recurrent_bias_reverse"]
    assert gru.output_dim == 16 and rnn.parameters()[1].shape == (8, 8)
    k = 1 / np.sqrt(8)
    w = lstm.kernel.value
    assert np.abs(w).max() <= k and np.abs(w).max() > 0.8 * k  # U(-k, k), as torch
    assert np.abs(lstm.bias.value).max() <= 2 * k  # b_ih + b_hh: two such draws
    assert np.abs(gru.recurrent_bias.value).max() <= k
    nv.Sequential([L.LSTM(4, kernel_initializer="zeros", bias_initializer="ones")], input_dim=2)


def test_sequence_output_with_dense_on_the_last_axis_and_per_step_labels():
    m = nv.Sequential([L.GRU(6, return_sequences=True), L.Dropout(0.1), L.Dense(3)], input_dim=2)
    m.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss="cross_entropy", metrics=["accuracy"])
    x = rng(9).standard_normal((20, 5, 2)).astype(np.float32)
    y = (x[..., 0] > 0).astype(np.int64) + (x[..., 1] > 1)
    out = m.predict(x)
    assert out.shape == (20, 5, 3)
    # The Dense applies to every step's row of the GRU's outputs.
    h = np_layer(m.layers[0], x.astype(np.float64), weights64(m)[0])
    close_to_scale(out, h @ m.layers[2].kernel.value + m.layers[2].bias.value, 2e-6)
    loss0 = m.evaluate(x, y)["loss"]
    hist = m.fit(x, y, epochs=30, batch_size=8, verbose=0, validation_split=0.25)
    assert hist.history["loss"][-1] < 0.6 * loss0
    assert 0.0 <= hist.history["accuracy"][-1] <= 1.0 and "val_loss" in hist.history
    assert m.predict_proba(x).shape == (20, 5, 3)
    assert np.isfinite(m.train_step(x[:4], y[:4]))


def test_adding_like_task_learns():
    # Sign of the sum of a sequence: LSTM and GRU learn it quickly.
    x = rng(10).standard_normal((256, 12, 1)).astype(np.float32)
    y = (x.sum(axis=(1, 2)) > 0).astype(np.int64)
    for cell in (L.LSTM, L.GRU):
        nv.manual_seed(3)
        m = nv.Sequential([cell(16), L.Dense(2)], input_dim=1)
        m.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss="cross_entropy", metrics=["accuracy"])
        first = m.evaluate(x, y)["loss"]
        hist = m.fit(x, y, epochs=25, batch_size=32, verbose=0)
        assert hist.history["loss"][-1] < 0.35 * first, (cell.__name__, first, hist.history["loss"][-1])
        assert hist.history["accuracy"][-1] > 0.9


def test_embedding_model_learns_and_trains_through_ids():
    r = rng(11)
    ids = r.integers(0, 20, (200, 6))
    y = (ids == 7).any(axis=1).astype(np.int64)  # does token 7 occur?
    m = nv.Sequential([L.Embedding(20, 8), L.GRU(12), L.Dense(2)])
    m.compile(optimizer=nv.optimizers.Adam(lr=2e-2), loss="cross_entropy", metrics=["accuracy"])
    first = m.evaluate(ids, y)["loss"]
    m.fit(ids, y, epochs=30, batch_size=32, verbose=0, validation_data=(ids[:50], y[:50]))
    assert m.evaluate(ids, y)["loss"] < 0.4 * first
    assert m.input_dim == 1 and m.predict(ids).shape == (200, 2)


def test_thread_count_does_not_change_the_bits():
    x = rng(12).standard_normal((64, 10, 8)).astype(np.float32)
    y = rng(13).integers(0, 3, 64)
    results = []
    for threads in (1, 2):
        nv.set_num_threads(threads)
        nv.manual_seed(5)
        # Wide enough that the gate passes split over the sequences too.
        m = nv.Sequential([L.LSTM(64, return_sequences=True, bidirectional=True), L.GRU(96),
                           L.SimpleRNN(300), L.Dense(3)], input_dim=8)
        m.compile(optimizer=nv.optimizers.Adam(lr=1e-2), loss="cross_entropy")
        m.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
        results.append(np.concatenate([p.value.ravel() for p in m.parameters()]))
    nv.set_num_threads(2)
    assert np.array_equal(results[0], results[1])


def test_manual_loop_equals_train_step():
    x = rng(14).standard_normal((6, 4, 3)).astype(np.float32)
    y = rng(15).integers(0, 2, 6)
    models = []
    for _ in range(2):
        nv.manual_seed(9)
        m = nv.Sequential([L.LSTM(5), L.Dense(2)], input_dim=3)
        m.compile(optimizer=nv.optimizers.SGD(lr=0.1), loss="cross_entropy")
        models.append(m)
    models[0].train_step(x, y)
    loss = nv.losses.get("cross_entropy")
    out = models[1].forward(x, training=True)
    models[1].backward(loss.backward(out, y))
    models[1].optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_allclose(a.value, b.value, rtol=1e-6, atol=1e-7)


def test_save_load_weights_summary_freezing_and_clipping(tmp_path):
    ids = rng(16).integers(0, 10, (12, 7))
    y = rng(17).integers(0, 2, 12)
    m = nv.Sequential([L.Embedding(10, 4), L.LSTM(6, return_sequences=True, bidirectional=True),
                       L.Dropout(0.2), L.GRU(5, return_sequences=True), L.SimpleRNN(3, activation="relu"),
                       L.Dense(2)])
    m.compile(optimizer=nv.optimizers.Adam(lr=1e-2, global_clipnorm=0.5), loss="cross_entropy")
    m.fit(ids, y, epochs=2, batch_size=4, verbose=0)
    expected = 10 * 4 + 2 * (4 * 24 + 6 * 24 + 24) + (12 * 15 + 5 * 15 + 30) + (5 * 3 + 3 * 3 + 3) + 3 * 2 + 2
    assert m.count_params() == expected
    text = m.summary(print_fn=None)
    assert "LSTM" in text and "GRU" in text and "Embedding" in text
    path = tmp_path / "m.nerve"
    m.save(path)
    back = nv.load_model(path)
    np.testing.assert_array_equal(back.predict(ids), m.predict(ids))
    buf = io.BytesIO()
    m.save(buf)
    w = m.get_weights()
    fresh = nv.Sequential([L.Embedding(10, 4), L.LSTM(6, return_sequences=True, bidirectional=True),
                           L.Dropout(0.2), L.GRU(5, return_sequences=True), L.SimpleRNN(3, activation="relu"),
                           L.Dense(2)], input_dim=1)
    fresh.set_weights(w)
    np.testing.assert_array_equal(fresh.predict(ids), m.predict(ids))
    m.save_weights(tmp_path / "w.safetensors")
    fresh.load_weights(tmp_path / "w.safetensors")
    # Freezing: the LSTM's weights stay, the rest trains.
    m.layers[1].trainable = False
    before = [p.value.copy() for p in m.layers[1].parameters()]
    other = m.layers[3].kernel.value.copy()
    m.fit(ids, y, epochs=1, batch_size=4, verbose=0)
    for p, b in zip(m.layers[1].parameters(), before):
        np.testing.assert_array_equal(p.value, b)
    assert not np.array_equal(m.layers[3].kernel.value, other)
    twin = m.layers[1].copy()
    assert twin.get_config() == m.layers[1].get_config()


@pytest.mark.parametrize("opt", ["sgd", "rmsprop", "adagrad", "adadelta", "adamw", "nadam", "adamax", "ftrl"])
def test_every_optimizer_trains_a_recurrent_model(opt):
    x = rng(18).standard_normal((16, 5, 2)).astype(np.float32)
    y = rng(19).integers(0, 2, 16)
    m = nv.Sequential([L.GRU(4), L.Dense(2)], input_dim=2)
    m.compile(optimizer=opt, loss="cross_entropy")
    before = m.get_weights()
    m.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, m.get_weights()))


# -- bad input ------------------------------------------------------------------------------


def test_bad_input_raises_clear_value_errors():
    m = nv.Sequential([L.LSTM(4), L.Dense(2)], input_dim=3)
    m.compile(optimizer="adam", loss="cross_entropy")
    good = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(ValueError, match="3-D"):
        m.predict(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="features per step"):
        m.predict(np.zeros((2, 5, 4), np.float32))
    bad = good.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.predict(bad)
    with pytest.raises(ValueError, match="NaN"):
        m.train_step(bad, np.array([0, 1]))
    with pytest.raises(ValueError):
        m.train_step(good, np.array([0, 1, 1]))
    with pytest.raises(ValueError):
        m.predict(np.zeros((0, 5, 3), np.float32))
    e = nv.Sequential([L.Embedding(5, 3), L.GRU(2, return_sequences=True)])
    e.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="out of range"):
        e.predict(np.array([[0, 5]]))
    with pytest.raises(ValueError, match="out of range"):
        e.predict(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="integer token ids"):
        e.predict(np.array([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="integer token ids"):
        e.predict(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="shape"):
        e.fit(np.array([[0, 1, 2]]), np.zeros((1, 2, 2)), verbose=0)  # targets need (batch, time, out)
    with pytest.raises(ValueError):
        L.LSTM(0)
    with pytest.raises(ValueError):
        L.SimpleRNN(3, activation="sigmoid")
    with pytest.raises(ValueError):
        L.Embedding(2 ** 24, 3)
    with pytest.raises(ValueError, match="input_dim=1"):
        nv.Sequential([L.Embedding(5, 3)], input_dim=4)
    with pytest.raises(ValueError, match="return_sequences"):
        nv.Sequential([L.Residual([L.LSTM(3)])], input_dim=3)
    # The C++ layer checks float ids itself (a direct core call never reads outside the table).
    core = L.Embedding(4, 2)
    nv.Sequential([core], input_dim=1)
    with pytest.raises(ValueError, match="token id"):
        core._core.forward_np(np.array([[1.5]], np.float32), False)


def test_export_and_interop_refuse_recurrent_layers():
    m = nv.Sequential([L.LSTM(3), L.Dense(2)], input_dim=2)
    pytest.importorskip("onnx")
    with pytest.raises(Exception, match="LSTM"):
        nv.onnx.export(m, io.BytesIO())


def test_to_torch_refuses_recurrent_layers():
    pytest.importorskip("torch")
    m = nv.Sequential([L.GRU(3), L.Dense(2)], input_dim=2)
    with pytest.raises(ValueError, match="GRU"):
        nv.interop.to_torch(m)


def test_layers_used_on_their_own_take_sequences():
    x = rng(20).standard_normal((2, 3, 5)).astype(np.float32)
    for rs in (True, False):
        lstm = L.GRU(4, return_sequences=rs, bidirectional=True)
        y = lstm.forward(x, training=True)
        assert y.shape == ((2, 3, 8) if rs else (2, 8))
        dy = rng(21).standard_normal(y.shape).astype(np.float32)
        dx = lstm.backward(dy)
        m = nv.Sequential([lstm.copy()], input_dim=5)
        y2, dx2, grads = analytic_grads(m, x, dy)
        np.testing.assert_array_equal(y, y2)
        np.testing.assert_allclose(dx, dx2, rtol=1e-6, atol=1e-7)
        for p, g in zip(lstm.parameters(), grads):
            np.testing.assert_allclose(p.grad, g, rtol=1e-6, atol=1e-7)
    emb = L.Embedding(6, 3)
    out = emb.forward(np.array([[1, 2], [5, 0]]), training=True)
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[1, 0], emb.embeddings.value[5])
    assert emb.backward(np.ones((2, 2, 3), np.float32)).shape == (2, 2)
    np.testing.assert_array_equal(emb.embeddings.grad[[0, 1, 2, 5]], 1)
    np.testing.assert_array_equal(emb.embeddings.grad[3], 0)
    # Dense on its own applies to the last axis of a sequence too.
    d = L.Dense(2)
    assert d.forward(x).shape == (2, 3, 2)
    with pytest.raises(ValueError, match="3-D"):
        L.LSTM(3).forward(np.zeros((2, 5), np.float32))


def test_optimize_for_inference_refuses_recurrent_models():
    m = nv.Sequential([L.LSTM(3), L.Dense(2)], input_dim=2)
    with pytest.raises(ValueError, match="LSTM"):
        m.optimize_for_inference()


def test_from_torch_refuses_recurrent_modules_by_name():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="LSTM"):
        nv.interop.from_torch(torch.nn.Sequential(torch.nn.LSTM(3, 4, batch_first=True)), input_dim=3)


def test_batched_predict_weights_and_validation_split_on_sequences():
    x = rng(22).standard_normal((13, 6, 3)).astype(np.float32)
    y = rng(23).integers(0, 2, (13, 6))
    m = nv.Sequential([L.LSTM(5, return_sequences=True), L.Dense(2)], input_dim=3)
    m.compile(optimizer=nv.optimizers.SGD(lr=0.1), loss="cross_entropy", metrics=["accuracy"])
    # predict in batches of whole sequences gives the one-batch result
    np.testing.assert_allclose(m.predict(x, batch_size=4), m.predict(x, batch_size=256), rtol=1e-6, atol=1e-7)
    ev = m.evaluate(x, y)
    out = m.predict(x).reshape(-1, 2)
    assert ev["accuracy"] == pytest.approx(np.mean(out.argmax(1) == y.ravel()))
    # Per-sample weights of a sequence output weigh every step of the sample:
    # weight 0 for all but the first sample is training on that sample alone.
    w = np.zeros(13)
    w[0] = 13.0
    twins = []
    for _ in range(2):
        nv.manual_seed(4)
        t = nv.Sequential([L.LSTM(5, return_sequences=True), L.Dense(2)], input_dim=3)
        t.compile(optimizer=nv.optimizers.SGD(lr=0.1), loss="cross_entropy")
        twins.append(t)
    twins[0].fit(x, y, epochs=1, batch_size=13, verbose=0, shuffle=False, sample_weight=w)
    twins[1].fit(x[:1], y[:1], epochs=1, batch_size=1, verbose=0, shuffle=False)
    for a, b in zip(twins[0].parameters(), twins[1].parameters()):
        np.testing.assert_allclose(a.value, b.value, rtol=1e-5, atol=1e-6)
    # validation_split of token ids: the held-out ids stay ids
    e = nv.Sequential([L.Embedding(9, 3), L.GRU(4), L.Dense(2)])
    e.compile(optimizer="adam", loss="cross_entropy", metrics=["accuracy"])
    ids = rng(24).integers(0, 9, (20, 5))
    hist = e.fit(ids, ids[:, 0] % 2, epochs=2, batch_size=4, verbose=0, validation_split=0.25)
    assert len(hist.history["val_loss"]) == 2 and np.isfinite(hist.history["val_accuracy"]).all()
    with pytest.raises(ValueError, match="class_weight"):
        m.fit(x, y, class_weight={0: 1.0, 1: 2.0}, verbose=0)
    with pytest.raises(ValueError, match="not supported with sequence input"):
        m.fit(x, y, augment=lambda xb, r: xb, verbose=0)
