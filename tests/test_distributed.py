"""Data-parallel training over MPI (nerve.distributed).

The multi-rank checks run tests/_mpi_worker.py under ``mpirun -n 2`` and
``-n 3`` on loopback (a subprocess with a timeout; mpi4py's ``-m mpi4py``
runner aborts the whole job on an exception, so nothing hangs). CI installs
mpi4py and the mpich wheel (the ``test`` extra); the test is skipped only where
they cannot be installed.

Tolerances and reduction order, as asserted:
- against one process training on the same global batches: weights within
  2e-6 absolute (measured ~6e-8 after 12 steps): the only difference is the
  order of the float sum over rows inside the GEMMs and bias sums, since with
  equal shards and a power-of-two world the per-rank scale (1/world) is exact;
- against the same steps emulated in one process with the split C++ calls and
  a rank-order float32 sum: bit-identical, for reduction="ordered" on any
  world size and for MPI's own sum on 2 ranks (g0 + g1 is order-free) and on 3
  (MPICH on loopback).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import nerve as nv
from nerve import _core

mpi4py = None
try:
    import mpi4py  # noqa: F401
    from mpi4py import MPI  # noqa: F401
except ImportError:  # pragma: no cover - CI installs it
    pass

needs_mpi = pytest.mark.skipif(mpi4py is None, reason="mpi4py/MPI not installable here (pip install 'nerve[mpi]')")
WORKER = os.path.join(os.path.dirname(__file__), "_mpi_worker.py")


def _mpirun():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else (shutil.which("mpiexec") or shutil.which("mpirun"))


def run_ranks(n, args, tmp_path, timeout=240):
    launcher = _mpirun()
    assert launcher, "mpi4py is installed but no mpiexec/mpirun was found (pip install mpich)"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [launcher, "-n", str(n), sys.executable, "-m", "mpi4py", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(tmp_path))
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def worker_result(n, scenario, tmp_path):
    out = run_ranks(n, [WORKER, scenario, str(tmp_path)], tmp_path)
    lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
    assert len(lines) == 1, out
    return json.loads(lines[0][len("RESULT "):])


@needs_mpi
def test_two_ranks(tmp_path):
    r = worker_result(2, "two", tmp_path)
    for name in ("sgd", "adam_clip"):
        assert r[f"{name}_max_diff"] <= 2e-6, r
        assert r[f"{name}_changed"] > 1e-2, r          # it trained (and from rank 0's init)
        assert r[f"{name}_loss_diff"] <= 1e-6, r       # epoch loss averaged over the ranks' rows
        assert r[f"{name}_acc_equal"], r
    assert r["adam_clip_grad_norm"] > 0.05 * 4, r      # global_clipnorm=0.05 was active
    assert r["sample_weight_max_diff"] <= 2e-6 and r["sample_weight_changed"] > 1e-2, r
    assert r["bits_sum"] and r["bits_ordered"], r
    assert not r["dropout_local_losses_equal"] and r["plain_local_losses_equal"], r
    assert r["bn_none_differ"] and r["bn_mean_equal_ranks"] and r["bn_mean_is_mean"], r
    assert r["bn_broadcast_is_rank0"], r
    assert r["val_loss_diff"] <= 1e-9 and r["val_acc_diff"] <= 1e-12, r
    assert r["evaluate_loss_diff"] <= 1e-9, r
    assert r["checkpoint_files"] == [["ckpt-1.nerve", "ckpt-2.nerve", "log.csv"], []], r
    assert r["checkpoint_matches"], r
    assert r["stop_steps"] == [2, 2], r                # rank 1 asked to stop after batch 1
    assert r["bad_shard_error"] == "distributed fit: rank 1: x contains NaN or Inf at row 3, column 4", r


@needs_mpi
def test_three_ranks_uneven_shards(tmp_path):
    r = worker_result(3, "uneven", tmp_path)
    assert r["steps"] == 7, r
    for red in ("sum", "ordered"):
        assert r[f"{red}_max_diff"] <= 2e-6, r
        assert r[f"{red}_loss_diff"] <= 1e-6, r
    assert r["ordered_bits"], r
    assert r["sum_bits"], r


@needs_mpi
def test_backup_and_restore_distributed(tmp_path):
    r = worker_result(2, "resume", tmp_path)
    assert r["files"] == [["backup.nerve"], None], r       # rank 0 wrote; rank 1 wrote nothing
    assert r["restored"] == 2 and r["epochs"] == [2, 3, 4], r  # the crash came before epoch 2 was backed up
    assert r["bits"] and r["step_equal"] and r["loss_equal"], r  # the uninterrupted run's bits (check=True: all ranks)
    assert r["left"] == [False, False], r                    # deleted after the complete run


@needs_mpi
def test_backup_and_restore_after_a_rank_is_killed(tmp_path):
    # Job 1: rank 1 SIGKILLs itself inside epoch 2; the launcher ends the job.
    cmd = [_mpirun(), "-n", "2", sys.executable, "-m", "mpi4py", WORKER, "resume_kill", str(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=str(tmp_path),
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode != 0 and (tmp_path / "killed").exists(), (p.returncode, p.stdout[-2000:])
    assert (tmp_path / "bk" / "backup.nerve").exists()
    # Job 2: the same command resumes at epoch 2 and ends with the uninterrupted run's bits.
    r = worker_result(2, "resume_kill", tmp_path)
    assert r["restored"] == 2 and r["epochs"] == [2, 3], r
    assert r["bits"] and r["val_equal"], r
    assert not (tmp_path / "bk" / "backup.nerve").exists()


@needs_mpi
def test_cli_distributed(tmp_path):
    out = run_ranks(2, ["-m", "nerve", "train", "--distributed", "--epochs", "3", "--json",
                        "--save", str(tmp_path / "m.nerve")], tmp_path)
    summaries = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    assert len(summaries) == 1, out                    # rank 0 alone reports
    s = summaries[0]
    assert s["ranks"] == 2 and s["test_accuracy"] > 0.85, s
    assert os.path.exists(tmp_path / "m.nerve")


# -- one process: the split step, and a world of one rank -----------------------------
def _model(opt, extra=()):
    nv.manual_seed(3)
    m = nv.Sequential([nv.layers.Dense(32, activation="relu", kernel_regularizer=nv.regularizers.L2(1e-3),
                                       kernel_constraint=nv.constraints.MaxNorm(1.0)), *extra,
                       nv.layers.Dense(5)], input_dim=12)
    m.compile(optimizer=opt, loss="cross_entropy", metrics=["accuracy"])
    return m


def _data(n=64):
    g = np.random.default_rng(0)
    return g.standard_normal((n, 12)).astype(np.float32), g.integers(0, 5, n)


@pytest.mark.parametrize("batch", [2, 16])
@pytest.mark.parametrize("make_opt", [lambda: nv.optimizers.Adam(lr=1e-2, global_clipnorm=0.5),
                                      lambda: nv.optimizers.SGD(lr=0.1, momentum=0.9, nesterov=True),
                                      lambda: nv.optimizers.Ftrl(lr=0.1), lambda: nv.optimizers.RMSprop(clipvalue=0.1)])
def test_split_step_is_train_step(batch, make_opt):
    """compute_gradients + apply_update gives train_step's bits (at batches
    1-4 train_step fuses Dense's update into backward; the split never does)."""
    x, y = _data()
    a, b = (_model(make_opt(), (nv.layers.Dropout(0.2), nv.layers.BatchNorm())) for _ in range(2))
    b._ready(x)
    for s in range(0, len(x), batch):
        la = a.train_step(x[s:s + batch], y[s:s + batch])
        lab, val = b._split_y(y[s:s + batch], batch)
        lb, _ = b._net.compute_gradients(x[s:s + batch], lab, val, b.loss._spec, False, 1.0)
        lb += b._net.apply_update(b.optimizer._core)
        assert la == lb
    assert all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights()))
    assert a._net.step == b._net.step


def test_split_calls_checks_and_scale():
    x, y = _data()
    m = _model(nv.optimizers.SGD(lr=0.1))
    m._ready(x)
    lab, val = m._split_y(y, len(x))
    net, spec = m._net, m.loss._spec
    net.compute_gradients(x, lab, val, spec, False, 1.0)
    g1 = [p.grad.copy() for p in m.parameters()]
    net.compute_gradients(x, lab, val, spec, False, 0.25)
    assert all(np.array_equal(p.grad, 0.25 * g) for p, g in zip(m.parameters(), g1))  # power of 2: exact
    # The gathered-rows variant: the same gradient as on the gathered array.
    rows = np.array([5, 1, 9, 63], dtype=np.int64)
    net.compute_gradients(x[rows], lab[rows], None, spec, False, 1.0)
    g2 = [p.grad.copy() for p in m.parameters()]
    net.compute_gradients_rows(x, lab, val, rows, spec, False, 1.0)
    assert all(np.array_equal(p.grad, g) for p, g in zip(m.parameters(), g2))
    with pytest.raises(ValueError, match="row index out of range"):
        net.compute_gradients_rows(x, lab, val, np.array([64], dtype=np.int64), spec, False, 1.0)
    with pytest.raises(ValueError, match="grad_scale must be finite"):
        net.compute_gradients(x, lab, val, spec, False, float("nan"))
    bad = x.copy()
    bad[2, 3] = np.inf
    with pytest.raises(ValueError, match="x contains NaN or Inf at row 2, column 3"):
        net.compute_gradients_rows(bad, lab, val, np.array([0, 2], dtype=np.int64), spec, False, 1.0)
    with pytest.raises(ValueError):
        net.compute_gradients(x, np.full(len(x), 7), None, spec, False, 1.0)  # label out of range
    step = net.step
    net.apply_update(m.optimizer._core)
    assert net.step == step + 1


def test_split_calls_allocate_nothing_after_the_first():
    x, y = _data(256)
    m = _model(nv.optimizers.Adam(lr=1e-3), (nv.layers.Dropout(0.2), nv.layers.BatchNorm()))
    m._ready(x)
    lab, val = m._split_y(y, len(x))
    order = np.arange(256, dtype=np.int64)
    m._net.compute_gradients_rows(x, lab, val, order[:32], m.loss._spec, True, 0.5)
    m._net.apply_update(m.optimizer._core)
    before = _core.alloc_count()
    for s in range(32, 256, 32):
        m._net.compute_gradients_rows(x, lab, val, order[s:s + 32], m.loss._spec, True, 0.5)
        m._net.apply_update(m.optimizer._core)
    assert _core.alloc_count() == before


@needs_mpi
def test_world_of_one_is_plain_fit():
    """Under no launcher MPI starts a world of one rank: distributed fit is
    then the ordinary fit, bit for bit (scale 1, allreduce of one rank)."""
    import nerve.distributed as nvd

    nvd.init(threads=None)
    assert (nvd.rank(), nvd.world_size()) == (0, 1)
    x, y = _data(200)
    xv, yv = _data(50)
    runs = []
    for dist in (False, True, nvd.Options(reduction="ordered", check=True)):
        m = _model(nv.optimizers.Adam(lr=1e-2), (nv.layers.Dropout(0.2), nv.layers.BatchNorm()))
        h = m.fit(x, y, epochs=2, batch_size=32, validation_data=(xv, yv), verbose=0, seed=1, distributed=dist)
        runs.append((m, h.history))
    for m, hist in runs[1:]:
        assert all(np.array_equal(p, q) for p, q in zip(m.get_weights(), runs[0][0].get_weights()))
        assert hist == runs[0][1]
        assert m._net.seed == runs[0][0]._net.seed     # the per-rank seed is undone after fit


def test_shard_and_options():
    import nerve.distributed as nvd

    x = np.arange(10)
    parts = [nvd.shard(x, rank=r, world_size=3) for r in range(3)]
    assert [list(p) for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    a, b = nvd.shard(x, x * 2, rank=1, world_size=2)
    assert list(a) == [5, 6, 7, 8, 9] and list(b) == [10, 12, 14, 16, 18]
    with pytest.raises(ValueError, match="different numbers of rows"):
        nvd.shard(x, x[:3], rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank must be in"):
        nvd.shard(x, rank=2, world_size=2)
    with pytest.raises(ValueError, match="reduction must be"):
        nvd.Options(reduction="mean")
    with pytest.raises(ValueError, match="sync_buffers must be"):
        nvd.Options(sync_buffers="sum")
