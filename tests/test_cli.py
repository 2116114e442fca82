"""The command line: nerve train / info, on small settings."""
import json
import subprocess
import sys

import numpy as np
import pytest

from nerve import cli


def test_train_json_last_line(capsys):
    assert cli.main(["train", "--epochs", "5", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    for key in ("dataset", "test_accuracy", "test_loss", "epochs", "train_seconds", "samples_per_sec"):
        assert key in summary
    assert summary["dataset"] == "digits" and summary["epochs"] == 5
    assert summary["test_accuracy"] > 0.9
    assert any(line.startswith("epoch 5/5") for line in lines)


def test_train_on_csv_file(tmp_path, capsys):
    r = np.random.default_rng(0)
    x = r.standard_normal((200, 5))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    path = tmp_path / "data.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="a,b,c,d,e,label", comments="")
    assert cli.main(["train", "--dataset", str(path), "--epochs", "20", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["test_accuracy"] > 0.85


def test_bad_dataset_is_an_error(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--dataset", "no-such-dataset"])


def test_info_runs(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "simd: avx2+fma" in out or "simd:" in out
    assert "openmp" in out
