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
    assert cli.main(["train", "--dataset", "no-such-dataset"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "unknown dataset 'no-such-dataset'" in out.err


@pytest.mark.parametrize("flag, value, message", [
    ("--batch-size", "0", "must be >= 1"), ("--threads", "0", "must be >= 1"), ("--epochs", "-1", "must be >= 1"),
    ("--layers", "64,abc", "'abc' is not an integer"), ("--lr", "-1", "> 0"), ("--lr", "nan", "> 0"),
    ("--activation", "rellu", "did you mean 'relu'"), ("--optimizer", "adamm", "did you mean 'adam'"),
    ("--task", "classify", "invalid choice"), ("--test-size", "1.5", "in (0, 1)"), ("--seed", "-2", ">= 0"),
])
def test_bad_values_refused_before_anything_prints(flag, value, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", flag, value])
    assert e.value.code == 2
    out = capsys.readouterr()
    assert out.out == "" and flag in out.err and message in out.err


def test_bare_nerve_prints_help(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: nerve") and "train" in out and "predict" in out


def test_every_train_flag_has_help_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--dataset", "--task", "--layers", "--activation", "--optimizer", "--lr", "--epochs",
                 "--batch-size", "--test-size", "--seed", "--threads", "--delimiter", "--index-column",
                 "--save", "--json", "--backup-dir"):
        assert flag in text
    for default in ("(default: digits)", "(default: auto)", "(default: relu)", "(default: adam)",
                    "(default: 0.2)", "(default: 0)", "128,64", "20 epochs", "more than 50 distinct values"):
        assert default in text, default


def _wine_like(tmp_path, sep=";", index=True, header=True):
    """Class-sorted rows with string labels, written as pandas' to_csv would (index column first)."""
    r = np.random.default_rng(0)
    names = ["barbera", "barolo", "grignolino"]
    lines = []
    if header:
        lines.append(sep.join(([""] if index else []) + [f"f{j}" for j in range(4)] + ["cultivar"]))
    row = 0
    for k, name in enumerate(names):
        for _ in range(40):
            x = r.standard_normal(4) + 2.5 * k * np.array([1, -1, 0.5, 0])
            lines.append(sep.join(([str(row)] if index else []) + [f"{v:.5f}" for v in x] + [name]))
            row += 1
    path = tmp_path / ("wine.tsv" if sep == "\t" else "wine.csv")
    path.write_text("\n".join(lines) + "\n")
    return path, names


@pytest.mark.parametrize("sep, index, header", [(";", True, True), (",", False, True), ("\t", False, False)])
def test_text_tables_sniffed_with_string_labels(tmp_path, sep, index, header):
    from nerve import datasets

    path, names = _wine_like(tmp_path, sep, index, header)
    x, y, info = datasets.load_table(path)
    assert info["delimiter"] == sep and info["index_column_dropped"] == index
    assert info["task"] == "classification" and info["class_names"] == names
    assert x.shape == (120, 4) and list(np.bincount(y)) == [40, 40, 40]
    assert (info["header"] is not None) == header


def test_index_column_flag(tmp_path):
    from nerve import datasets

    path, _ = _wine_like(tmp_path)
    x, _, info = datasets.load_table(path, index_column=False)
    assert x.shape == (120, 5) and not info["index_column_dropped"]


def test_train_save_predict_keeps_class_names(tmp_path, capsys):
    path, names = _wine_like(tmp_path)
    model_path = tmp_path / "wine.nerve"
    assert cli.main(["train", "--dataset", str(path), "--epochs", "30", "--json", "--save", str(model_path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["task"] == "classification" and summary["test_accuracy"] > 0.9
    import nerve as nv
    assert nv.load_model(model_path).metadata["class_names"] == names
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", str(model_path), str(path), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "prediction" and len(lines) == 121
    truth = [ln.split(";")[-1] for ln in path.read_text().splitlines()[1:]]
    assert np.mean([a == b for a, b in zip(lines[1:], truth)]) > 0.9


def _diabetes_csv(tmp_path):
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    path = tmp_path / "diabetes.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", fmt="%.6f",
               header=",".join([f"x{i}" for i in range(10)] + ["target"]), comments="")
    return path, y


def test_regression_is_detected_and_reports_r2_mae(tmp_path, capsys):
    path, y = _diabetes_csv(tmp_path)   # targets written as 151.000000: whole numbers, but 214 distinct
    model_path = tmp_path / "d.nerve"
    assert cli.main(["train", "--dataset", str(path), "--json", "--save", str(model_path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["task"] == "regression" and "test_accuracy" not in summary
    for key in ("dataset", "task", "epochs", "train_seconds", "samples_per_sec", "test_r2", "test_mae", "test_loss"):
        assert key in summary
    assert summary["test_r2"] > 0.3 and summary["test_mae"] < 60
    assert cli.main(["predict", str(model_path), str(path)]) == 0
    pred = np.array([float(v) for v in capsys.readouterr().out.splitlines()[1:]])
    assert pred.shape == y.shape and 1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum() > 0.3


def test_task_rule_and_override(tmp_path):
    from nerve import datasets

    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((20, 2)), y=np.arange(20, dtype=np.float32) % 3)   # float dtype: regression
    assert datasets.load_table(p)[2]["task"] == "regression"
    _, y, info = datasets.load_table(p, task="classification")
    assert info["task"] == "classification" and y.dtype == np.int64 and info["class_names"] == [0, 1, 2]
    np.savez(p, x=np.zeros((20, 2)), y=np.arange(20) % 3)                      # integers: classes
    assert datasets.load_table(p)[2]["task"] == "classification"
    t = tmp_path / "t.csv"
    t.write_text("a,b\n" + "".join(f"{i},{i % 4 + 0.5}\n" for i in range(10)))  # fractional labels
    assert datasets.load_table(t)[2]["task"] == "regression"
    t.write_text("a,b\n" + "".join(f"{i * 0.1},{i}\n" for i in range(60)))      # 60 distinct integers
    assert datasets.load_table(t)[2]["task"] == "regression"


def test_csv_errors_use_zero_based_rows_and_columns_and_file_lines(tmp_path):
    from nerve import datasets

    t = tmp_path / "bad.csv"
    t.write_text("a,b,c\n1,2,0\n3,oops,1\n")
    with pytest.raises(ValueError, match=r"line 3 \(row 1, column 1 \('b'\)\): 'oops' is not a number"):
        datasets.load_table(t)
    t.write_text("a,b,c\n1,2,0\n3,4\n")
    with pytest.raises(ValueError, match=r"line 3 \(row 1\) has 2 fields, expected 3"):
        datasets.load_table(t)


def test_save_into_a_missing_folder_is_a_clean_error(tmp_path, capsys):
    import nerve as nv

    m = nv.Sequential([nv.layers.Dense(2)], input_dim=3)
    target = tmp_path / "nope" / "m.nerve"
    with pytest.raises(FileNotFoundError, match="the folder .*nope does not exist") as e:
        m.save(target)
    assert ".tmp" not in str(e.value)
    assert cli.main(["train", "--epochs", "1", "--save", str(target)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "does not exist" in out.err


def test_info_runs(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "simd: avx2+fma" in out or "simd:" in out
    assert "openmp" in out


def test_train_backup_dir_resumes_after_a_kill(tmp_path, capsys):
    import os
    import signal

    import nerve as nv

    args = ["train", "--epochs", "4", "--layers", "32", "--json"]
    assert cli.main(args + ["--save", str(tmp_path / "ref.nerve")]) == 0
    backup = tmp_path / "bk"
    # Killed (SIGKILL) right after the backup of epoch 2 was written.
    code = ("import os, signal, sys\n"
            "import nerve as nv\n"
            "from nerve import cli\n"
            "real = nv.callbacks.BackupAndRestore.on_epoch_end\n"
            "def end(self, epoch, logs=None):\n"
            "    real(self, epoch, logs)\n"
            "    if epoch == 1:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "nv.callbacks.BackupAndRestore.on_epoch_end = end\n"
            "cli.main(sys.argv[1:])\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    p = subprocess.run([sys.executable, "-c", code, *args, "--backup-dir", str(backup)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert (backup / "backup.nerve").exists()
    capsys.readouterr()
    assert cli.main(args + ["--backup-dir", str(backup), "--save", str(tmp_path / "out.nerve")]) == 0
    assert "resumed from the backup" in capsys.readouterr().out
    ref, out = nv.load_model(tmp_path / "ref.nerve"), nv.load_model(tmp_path / "out.nerve")
    for a, b in zip(ref.get_weights(), out.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not (backup / "backup.nerve").exists()
