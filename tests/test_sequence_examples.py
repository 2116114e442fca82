"""The sequence examples run and show what they claim, on small settings."""
import importlib.util
import pathlib

import numpy as np

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_adding_problem_data_has_two_marks_and_their_sum():
    x, y = load("sequences_adding").adding_problem(50, 20, seed=0)
    assert x.shape == (50, 20, 2) and y.shape == (50, 1)
    assert (x[:, :, 1].sum(axis=1) == 2).all()
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * x[:, :, 1]).sum(axis=1), rtol=1e-6)


def test_the_plain_rnn_gradient_vanishes_and_the_gated_cells_learn(tmp_path):
    curves, grads = load("sequences_adding").main(
        ["--length", "40", "--train", "3000", "--epochs", "8", "--out", str(tmp_path)])
    assert min(curves["GRU"][-2:]) < 0.05          # the mean predictor's MSE is ~0.167
    assert min(curves["SimpleRNN"]) > 0.12
    simple, gru = grads["SimpleRNN"], grads["GRU"]
    assert simple[0] / simple[-1] < 1e-4 < gru[0] / gru[-1]


def test_char_model_trains_and_writes(capsys):
    mod = load("char_rnn")
    text, chars, ids = mod.load_text()
    assert "".join(chars[i] for i in ids[:40]) == text[:40]
    hist = mod.main(["--epochs", "2", "--units", "32", "--window", "24", "--length", "50"])
    loss = hist.history["loss"]
    assert loss[-1] < loss[0] < np.log(len(chars)) + 0.5
    out = capsys.readouterr().out
    sample = out.split("--- sample ---\n", 1)[1]
    assert sample.startswith("Shall I compare thee") and len(sample.rstrip("\n")) >= len("Shall I compare thee") + 50
