"""nerve.benchmark: FLOP accounting and a tiny end-to-end run (no PyTorch
needed); bench/ab_builds.py on two copies of one build."""
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import nerve
from nerve import benchmark


def test_flops_per_sample_counts_forward_and_backward():
    # 784-512-10: first layer forward 2 + dW 2 (no dX); second layer 2 + 2 + 2.
    assert benchmark.flops_per_sample([784, 512, 10]) == 4 * 784 * 512 + 6 * 512 * 10


def test_run_and_table_on_a_tiny_model(tmp_path):
    rows = benchmark.run([8, 16, 3], batches=[1, 4], threads=[1], rounds=1, against=None,
                         seconds=0.01, fused=False, log=lambda *_: None, roof=False)
    assert [(r["threads"], r["batch"]) for r in rows] == [(1, 1), (1, 4)]
    for r in rows:
        assert r["nerve_samples_per_s"] > 0
        assert np.isclose(r["nerve_gflops"], r["nerve_samples_per_s"] * benchmark.flops_per_sample([8, 16, 3]) / 1e9)
        assert r["nerve_best_gflops"] >= r["nerve_gflops"]  # best round vs median round
    text = benchmark.table(rows, None)
    assert text.count("\n") == 3 and "| 1 | 4 |" in text
    out = tmp_path / "r.json"
    assert benchmark.main(["--model", "deep", "--batches", "2", "--threads", "1", "--rounds", "1",
                           "--seconds", "0.01", "--no-roof", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["model"] == benchmark.MODELS["deep"] and len(data["results"]) == 1
    assert data["meta"]["flush_denormal"] is False
    before = nerve.get_flush_denormal()
    try:  # --flush-denormal: nerve computes with subnormals flushed, and says so
        assert benchmark.main(["--batches", "2", "--threads", "1", "--rounds", "1", "--seconds", "0.01",
                               "--no-roof", "--flush-denormal", "--json", str(out)]) == 0
        assert json.loads(out.read_text())["meta"]["flush_denormal"] is True and nerve.get_flush_denormal()
    finally:
        nerve.set_flush_denormal(before)


def test_peers_and_options():
    assert benchmark.peers_of("torch,jax") == ["torch", "jax"]
    assert benchmark.peers_of(None) == []
    with pytest.raises(ValueError, match="unknown peer 'tf'"):
        benchmark.peers_of("torch,tf")
    assert benchmark._drop_options(["--threads", "1,2", "--json=x", "--rounds", "3"],
                                   {"--threads": 1, "--json": 1}) == ["--rounds", "3"]
    env = benchmark.jax_thread_env(1, {"XLA_FLAGS": "--a"})
    assert env["XLA_FLAGS"].startswith("--a ") and "intra_op_parallelism_threads=1" in env["XLA_FLAGS"]
    assert "XLA_FLAGS" not in benchmark.jax_thread_env(2, {}) or benchmark.jax_thread_env(2, {})["XLA_FLAGS"] == ""


def test_jax_peer_runs_one_process_per_thread_count(tmp_path):
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    out = tmp_path / "r.json"
    assert benchmark.main(["--against", "jax", "--model", "deep", "--batches", "2", "--threads", "1,2",
                           "--rounds", "1", "--seconds", "0.01", "--no-roof", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["threads"] for r in rows] == [1, 2]
    for r in rows:
        assert r["jax_samples_per_s"] > 0 and r["ratio_jax"] > 0 and "ratio" not in r


def test_sgemm_roof_is_a_positive_rate():
    roof = benchmark.sgemm_roof(None, n=64, seconds=0.01)
    assert set(roof) == {"numpy"} and roof["numpy"] > 0


def test_roof_share_shows_the_median_and_the_best_round():
    r = {"nerve_vs_best_sgemm": 0.874, "nerve_best_vs_best_sgemm": 0.912}
    assert benchmark.roof_share(r) == "87% (best round 91%)"
    assert benchmark.roof_share({"nerve_vs_best_sgemm": 0.9}) == "90%"  # older results: median only


AB_BUILDS = pathlib.Path(__file__).resolve().parents[1] / "bench" / "ab_builds.py"
INSTALLED_BUILD = os.path.dirname(os.path.dirname(nerve.__file__))


def test_ab_builds_script_compares_two_builds():
    # Both sides the installed build: the script runs, alternates, and prints
    # a pair row and the summary line for a ratio it computed.
    build = INSTALLED_BUILD
    out = subprocess.run([sys.executable, str(AB_BUILDS), build, build, "--batch", "8", "--threads", "1",
                          "--pairs", "1"], check=True, capture_output=True, text=True).stdout
    assert re.search(r"^\| 1 \| \d+ \| \d+ \| \d+ \| \d+ \| \d+\.\d{3} \|$", out, re.M), out
    ratio = float(re.search(r"median B / A: (\d+\.\d+)", out).group(1))
    assert 0.2 < ratio < 5.0


def test_ab_builds_bursts_mode_reports_an_interval():
    build = INSTALLED_BUILD
    out = subprocess.run([sys.executable, str(AB_BUILDS), build, build, "--batch", "8", "--threads", "1",
                          "--bursts", "6", "--burst-ms", "5", "--gap-ms", "1",
                          "--env-b", "NERVE_ADAPTIVE_THREADS=0"],
                         check=True, capture_output=True, text=True).stdout
    assert re.search(r"^A: median \d+ µs/step \(best \d+\); B: median \d+ µs/step", out, re.M), out
    m = re.search(r"median B / A: (\d+\.\d+), 95% interval (\d+\.\d+)-(\d+\.\d+); B faster in (\d) of 6", out)
    assert m, out
    mid, lo, hi = (float(m.group(i)) for i in (1, 2, 3))
    assert lo <= mid <= hi and 0.2 < mid < 5.0


def test_ab_builds_refuses_a_setting_without_a_value():
    r = subprocess.run([sys.executable, str(AB_BUILDS), ".", ".", "--env-b", "OMP_PROC_BIND"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "NAME=VALUE" in r.stderr


def test_median_interval_uses_the_binomial_ranks():
    spec = importlib.util.spec_from_file_location("ab_builds", AB_BUILDS)
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    # Tables of the sign-test interval: n = 20 -> ranks 6 and 15; n = 6 -> 1 and 6
    # (P(X = 0) = 1/64 <= 2.5%); n = 5: P(X = 0) = 1/32 > 2.5%, no interval.
    assert ab.median_interval(list(range(20, 0, -1))) == (6, 15)
    assert ab.median_interval([3, 1, 2, 6, 5, 4]) == (1, 6)
    assert ab.median_interval([1, 2, 3, 4, 5]) is None
    assert ab.median_interval(list(range(1, 101))) == (40, 61)
