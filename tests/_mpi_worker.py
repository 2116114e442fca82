"""Runs under mpirun (tests/test_distributed.py starts it): each scenario
trains data-parallel, then rank 0 repeats the training in one process as the
oracle and prints one line ``RESULT {json}`` with the measured differences;
the pytest side asserts on them. Every rank exits non-zero on an exception
(mpi4py's ``-m mpi4py`` runner aborts the whole job), so a failure never hangs.

Usage: mpirun -n N python tests/_mpi_worker.py SCENARIO TMPDIR
"""
import json
import os
import sys

import numpy as np

import nerve as nv
import nerve.distributed as nvd

L = nv.layers


def data(n=256, features=12, classes=5, seed=0):
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, features)).astype(np.float32)
    y = (np.abs(x[:, :classes]).argmax(axis=1) + g.integers(0, 2, n)) % classes
    return x, y.astype(np.int64)


def mlp(seed, extra=(), opt=None):
    nv.manual_seed(seed)
    m = nv.Sequential([L.Dense(48, activation="tanh", kernel_regularizer=nv.regularizers.L2(1e-3),
                               kernel_constraint=nv.constraints.MaxNorm(2.0)), *extra, L.Dense(5)], input_dim=12)
    m.compile(optimizer=opt() if opt else nv.optimizers.SGD(lr=0.1, momentum=0.9), loss="cross_entropy",
              metrics=["accuracy"])
    return m


def max_diff(a, b):
    return max(float(np.abs(p - q).max()) for p, q in zip(a.get_weights(), b.get_weights()))


def identical(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights()))


def block_rows(r, w, per_rank, n):
    """Rank r's rows when global batch k is rows [k*B, (k+1)*B), B = w*per_rank,
    and rank r takes part r of each: the single process sees the same rows."""
    b = w * per_rank
    return np.concatenate([np.arange(k * b + r * per_rank, k * b + (r + 1) * per_rank) for k in range(n // b)])


def emulate(model, shards, per_rank, steps, reduction_order):
    """The distributed steps in one process with the split calls: each shard's
    gradient (scaled by its share of the step's rows), summed in rank order
    in float32, then one update."""
    model._ready(shards[0][0])
    net, opt = model._net, model.optimizer
    grads = [a.grads(0, a.size) for a in {id(p._arena): p._arena for p in model.parameters()}.values()]
    for g in grads:
        g[...] = 0
    seed = int(net.seed)
    for s in range(steps):
        sizes = [max(0, min(per_rank, len(x) - s * per_rank)) for x, _ in shards]
        total = sum(sizes)
        acc = [np.zeros_like(g) for g in grads]
        for r, ((x, y), m) in enumerate(zip(shards, sizes)):
            if m == 0:
                continue
            net.seed = nvd._per_rank_seed(seed, r)
            lab, val = model._split_y(y[s * per_rank: s * per_rank + m], m)
            net.compute_gradients(x[s * per_rank: s * per_rank + m], lab, val, model.loss._spec, False, m / total)
            for a, g in zip(acc, grads):
                a += g  # rank order: ((g0 + g1) + g2) + ...
        net.seed = seed
        for a, g in zip(acc, grads):
            g[...] = a
        net.apply_update(opt._core)
    return model


class Capture(nv.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batches_end(self, first_batch, batch_losses, logs=None):
        self.losses.extend(float(v) for v in batch_losses)


class StopOn(nv.callbacks.Callback):
    """Asks to stop after `batch` on one rank only."""

    def __init__(self, who, batch):
        super().__init__()
        self.who, self.batch = who, batch

    def on_batch_end(self, batch, logs=None):
        if nvd.rank() == self.who and batch == self.batch:
            self.model.stop_training = True


def scenario_two(tmp):
    r, w = nvd.rank(), nvd.world_size()
    assert w == 2
    out = {}
    x, y = data()
    per_rank, epochs = 32, 3
    idx = block_rows(r, w, per_rank, len(x))

    # 1. Equivalence with one process on the global batch (SGD + momentum, L2,
    # max-norm), and with Adam whose global-norm clipping is active: clipping
    # must see the averaged gradient.
    for name, opt in (("sgd", None), ("adam_clip", lambda: nv.optimizers.Adam(lr=1e-2, global_clipnorm=0.05))):
        m = mlp(3 + 100 * r, opt=opt)  # a different init per rank: rank 0's must win
        h = m.fit(x[idx], y[idx], epochs=epochs, batch_size=per_rank, shuffle=False, verbose=0,
                  distributed=nvd.Options(check=True))
        if r == 0:
            ref = mlp(3, opt=opt)
            hr = ref.fit(x, y, epochs=epochs, batch_size=w * per_rank, shuffle=False, verbose=0)
            out[f"{name}_max_diff"] = max_diff(m, ref)
            out[f"{name}_loss_diff"] = max(abs(a - b) for a, b in zip(h.history["loss"], hr.history["loss"]))
            out[f"{name}_acc_equal"] = h.history["accuracy"] == hr.history["accuracy"]
            out[f"{name}_changed"] = max_diff(m, mlp(3, opt=opt))
        if name == "adam_clip" and r == 0:
            # The averaged gradient's norm at the start is above the clip norm (clipping active).
            probe = mlp(3, opt=opt)
            probe._ready(x)
            lab, val = probe._split_y(y[:64], 64)
            probe._net.compute_gradients(x[:64], lab, val, probe.loss._spec, False, 1.0)
            out["adam_clip_grad_norm"] = float(np.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum())
                                                            for p in probe.parameters())))

    # Sample weights: each rank's weighted mean over its rows, scaled by its
    # share, sums to the global batch's weighted loss (sum_i w_i l_i / B).
    sw = np.random.default_rng(4).uniform(0.1, 2.0, len(x)).astype(np.float32)
    m = mlp(3)
    m.fit(x[idx], y[idx], epochs=1, batch_size=per_rank, shuffle=False, verbose=0, sample_weight=sw[idx],
          distributed=True)
    if r == 0:
        ref = mlp(3)
        ref.fit(x, y, epochs=1, batch_size=w * per_rank, shuffle=False, verbose=0, sample_weight=sw)
        out["sample_weight_max_diff"] = max_diff(m, ref)
        out["sample_weight_changed"] = max_diff(ref, mlp(3))

    # 2. Fixed reduction order: bit-identical to the same steps in one process.
    shards = [(x[block_rows(k, w, per_rank, len(x))], y[block_rows(k, w, per_rank, len(x))]) for k in range(w)]
    for reduction in ("sum", "ordered"):
        m = mlp(5, extra=(L.Dropout(0.3),), opt=lambda: nv.optimizers.Adam(lr=1e-2, global_clipnorm=0.5))
        m.fit(x[idx], y[idx], epochs=1, batch_size=per_rank, shuffle=False, verbose=0,
              distributed=nvd.Options(reduction=reduction, check=True))
        if r == 0:
            ref = emulate(mlp(5, extra=(L.Dropout(0.3),),
                              opt=lambda: nv.optimizers.Adam(lr=1e-2, global_clipnorm=0.5)),
                          shards, per_rank, len(idx) // per_rank, reduction)
            out[f"bits_{reduction}"] = identical(m, ref)
            out[f"bits_{reduction}_max_diff"] = max_diff(m, ref)

    # 3. Dropout streams differ per rank: the same rows on both ranks give
    # different local losses with dropout, the same without.
    for name, extra in (("dropout", (L.Dropout(0.5),)), ("plain", ())):
        cap = Capture()
        m = mlp(7, extra=extra)
        m.fit(x[:128], y[:128], epochs=1, batch_size=32, shuffle=False, verbose=0, callbacks=[cap],
              distributed=True)
        losses = nvd.comm().allgather(cap.losses)
        out[f"{name}_local_losses_equal"] = losses[0] == losses[1]

    # 4. BatchNorm running statistics: per rank with sync_buffers=None (the
    # shards differ), averaged with "mean" (one epoch: the mean of the
    # per-rank statistics of the same run, since they do not feed training).
    stats = {}
    for mode in (None, "mean", "broadcast"):
        m = mlp(9, extra=(L.BatchNorm(),))
        m.fit(x[idx], y[idx], epochs=1, batch_size=per_rank, shuffle=False, verbose=0,
              distributed=nvd.Options(sync_buffers=mode))
        stats[mode] = nvd.comm().allgather([b.copy() for b in m.buffers()])
    out["bn_none_differ"] = not all(np.array_equal(a, b) for a, b in zip(*stats[None]))
    out["bn_mean_equal_ranks"] = all(np.array_equal(a, b) for a, b in zip(*stats["mean"]))
    out["bn_mean_is_mean"] = all(np.array_equal(m_, (a + b) / np.float32(2))
                                 for m_, a, b in zip(stats["mean"][0], *stats[None]))
    out["bn_broadcast_is_rank0"] = all(np.array_equal(b_, a) for b_, a in zip(stats["broadcast"][1], stats[None][0]))

    # 5. Validation and epoch metrics averaged over the ranks (uneven shards):
    # the numbers one process gets on all rows.
    xv, yv = data(n=90, seed=1)
    vparts = [(xv[:50], yv[:50]), (xv[50:], yv[50:])]
    m = mlp(11)
    h = m.fit(x[idx], y[idx], epochs=1, batch_size=per_rank, shuffle=False, verbose=0,
              validation_data=vparts[r], distributed=True)
    if r == 0:
        ev = m.evaluate(xv, yv)
        out["val_loss_diff"] = abs(h.history["val_loss"][0] - ev["loss"])
        out["val_acc_diff"] = abs(h.history["val_accuracy"][0] - ev["accuracy"])
    ev_all = nvd.evaluate(m, *vparts[r])
    if r == 0:
        out["evaluate_loss_diff"] = abs(ev_all["loss"] - m.evaluate(xv, yv)["loss"])

    # 6. Checkpoints are written by rank 0 only; a stop asked on one rank stops all.
    d = os.path.join(tmp, f"rank{r}")
    os.makedirs(d, exist_ok=True)
    m = mlp(13)
    m.fit(x[idx], y[idx], epochs=2, batch_size=per_rank, shuffle=False, verbose=0,
          callbacks=[nv.callbacks.ModelCheckpoint(os.path.join(d, "ckpt-{epoch}.nerve")),
                     nv.callbacks.CSVLogger(os.path.join(d, "log.csv"))], distributed=True)
    files = nvd.comm().allgather(sorted(os.listdir(d)))
    out["checkpoint_files"] = files
    if r == 0:
        loaded = nv.load_model(os.path.join(d, "ckpt-2.nerve"))
        out["checkpoint_matches"] = identical(loaded, m)
    m = mlp(15)
    m.fit(x[idx], y[idx], epochs=2, batch_size=per_rank, shuffle=False, verbose=0, callbacks=[StopOn(1, 1)],
          distributed=nvd.Options(check=True))
    out["stop_steps"] = nvd.comm().allgather(int(m._net.step))
    # A bad shard on one rank fails every rank, before any step.
    bad = x[idx].copy()
    if r == 1:
        bad[3, 4] = np.nan
    try:
        mlp(17).fit(bad, y[idx], batch_size=per_rank, verbose=0, distributed=True)
        out["bad_shard_error"] = None
    except ValueError as e:
        out["bad_shard_error"] = str(e)
    return out


def scenario_uneven(tmp):
    """Three ranks, shards of 100 / 90 / 70 rows: steps for the largest shard,
    gradients weighted by rows (ranks out of rows contribute nothing)."""
    r, w = nvd.rank(), nvd.world_size()
    assert w == 3
    out = {}
    x, y = data(n=260)
    bounds = [0, 100, 190, 260]
    shards = [(x[bounds[k]:bounds[k + 1]], y[bounds[k]:bounds[k + 1]]) for k in range(w)]
    per_rank = 16
    steps = -(-100 // per_rank)
    for reduction in ("sum", "ordered"):
        m = mlp(21)
        h = m.fit(*shards[r], epochs=1, batch_size=per_rank, shuffle=False, verbose=0,
                  distributed=nvd.Options(reduction=reduction, check=True))
        if r == 0:
            # One process, global step s = the s-th batch of every shard, concatenated.
            ref = mlp(21)
            loss_sum = 0.0
            for s in range(steps):
                parts = [(sx[s * per_rank:(s + 1) * per_rank], sy[s * per_rank:(s + 1) * per_rank])
                         for sx, sy in shards]
                bx = np.concatenate([p[0] for p in parts])
                by = np.concatenate([p[1] for p in parts])
                loss_sum += ref.train_step(bx, by) * len(bx)
            out[f"{reduction}_max_diff"] = max_diff(m, ref)
            out[f"{reduction}_loss_diff"] = abs(h.history["loss"][0] - loss_sum / len(x))
            out[f"{reduction}_bits"] = identical(m, emulate(mlp(21), shards, per_rank, steps, reduction))
            out["steps"] = int(m._net.step)
    return out


def scenario_resume(tmp):
    """BackupAndRestore in a distributed fit: a run interrupted after epoch 2
    on every rank, then resumed by fresh models (another init on rank 1), must
    end with the bits of the uninterrupted run. Each rank names its own
    backup_dir: rank 0 writes (rank 1's stays empty) and rank 1 resumes from
    rank 0's broadcast."""
    r = nvd.rank()
    x, y = data(seed=4)
    shard = nvd.shard(x, y)
    extra = (lambda: (L.BatchNorm(momentum=0.2), L.Dropout(0.2)))  # new layers per model
    adam = (lambda: nv.optimizers.Adam(lr=5e-3))
    fit = dict(epochs=5, batch_size=16, shuffle=True, verbose=0, distributed=nvd.Options(check=True))
    ref = mlp(8, extra(), adam)
    h_ref = ref.fit(*shard, **fit)
    bk = os.path.join(tmp, f"bk{r}")

    class Crash(nv.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    crashed = mlp(8, extra(), adam)
    try:
        crashed.fit(*shard, callbacks=[Crash(), nv.callbacks.BackupAndRestore(bk)], **fit)
    except KeyboardInterrupt:
        pass
    files = sorted(os.listdir(bk)) if os.path.isdir(bk) else None
    nvd.barrier()
    cb = nv.callbacks.BackupAndRestore(bk)
    resumed = mlp(8 + 100 * r, extra(), adam)
    h = resumed.fit(*shard, callbacks=[cb], **fit)
    files = nvd.comm().gather(files, root=0)
    left = nvd.comm().gather(os.path.exists(cb.path), root=0)
    if r != 0:
        return {}
    return {"files": files, "epochs": h.epoch, "restored": cb.restored_epoch, "bits": identical(ref, resumed),
            "loss_equal": h.history["loss"] == h_ref.history["loss"][2:], "left": left,
            "step_equal": int(ref._net.step) == int(resumed._net.step)}


def scenario_resume_kill(tmp):
    """Run twice by the test: the first job's rank 1 SIGKILLs itself inside
    epoch 2 (the launcher then ends the job); the second job reruns the same
    fit, which resumes from rank 0's backup, and compares with an
    uninterrupted run trained in the same job."""
    import signal

    r = nvd.rank()
    x, y = data(seed=5)
    shard = nvd.shard(x, y)
    fit = dict(epochs=4, batch_size=16, shuffle=True, verbose=0, validation_split=0.25,
               validation_split_mode="random", distributed=nvd.Options(check=True))
    first = not os.path.exists(os.path.join(tmp, "killed"))

    class Kill(nv.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_batch_end(self, batch, logs=None):
            if first and r == 1 and self.epoch == 2 and batch == 1:
                open(os.path.join(tmp, "killed"), "w").close()
                os.kill(os.getpid(), signal.SIGKILL)

    model = mlp(12, (L.BatchNorm(), L.Dropout(0.25)), lambda: nv.optimizers.Adam(lr=5e-3))
    cb = nv.callbacks.BackupAndRestore(os.path.join(tmp, "bk"))
    h = model.fit(*shard, callbacks=[Kill(), cb], **fit)
    ref = mlp(12, (L.BatchNorm(), L.Dropout(0.25)), lambda: nv.optimizers.Adam(lr=5e-3))
    h_ref = ref.fit(*shard, **fit)
    if r != 0:
        return {}
    return {"restored": cb.restored_epoch, "epochs": h.epoch, "bits": identical(model, ref),
            "val_equal": h.history["val_loss"] == h_ref.history["val_loss"][2:]}


if __name__ == "__main__":
    scenario, tmp = sys.argv[1], sys.argv[2]
    nvd.init(threads=1)
    result = {"two": scenario_two, "uneven": scenario_uneven, "resume": scenario_resume,
              "resume_kill": scenario_resume_kill}[scenario](tmp)
    if nvd.rank() == 0:
        print("RESULT " + json.dumps(result), flush=True)
