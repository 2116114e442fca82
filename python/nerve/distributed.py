"""Data-parallel training over MPI (extra ``mpi``: mpi4py and an MPI library).

Run one process per rank under ``mpirun`` / ``mpiexec`` / ``srun``::

    import nerve as nv
    import nerve.distributed as nvd

    nvd.init()                                   # MPI_Init (via mpi4py), threads per rank
    x_shard, y_shard = nvd.shard(x, y)           # this rank's block of rows (or load only yours)
    model.fit(x_shard, y_shard, batch_size=256, epochs=5, distributed=True)
    if nvd.rank() == 0:
        model.save("model.nerve")

What ``fit(..., distributed=True)`` does (the scheme of Horovod and PyTorch
DDP):

- Rank 0 broadcasts the initial parameters, layer buffers (BatchNorm running
  statistics), the optimizer state (slots, step count, learning rate) and the
  network's random seed and step counter; every rank starts from rank 0's model.
- ``batch_size`` is per rank (as in DDP and Horovod): one step trains on
  ``batch_size`` rows of every rank's shard, a global batch of
  ``world_size * batch_size`` rows.
- Each step runs in two C++ calls around one collective:
  ``compute_gradients`` (forward, loss, backward; no update), an in-place
  ``MPI_Allreduce`` of the flat gradient arena (a zero-copy numpy view, one
  message per arena, normally one per model), then ``apply_update`` (weight
  penalties, clipping, the optimizer, masks, constraints). Clipping by global
  norm therefore sees the averaged gradient, and the update is the same on
  every rank, so the replicas stay identical.
- The average is weighted by rows: rank r's loss gradient is scaled by
  ``m_r / M`` (its rows in this step over the step's rows on all ranks) before
  backward, and the ranks' gradients are summed. With equal shards and a
  power-of-two world size the scale is exact (a power of two), so the sum of
  the ranks' gradients is what one process computes on the global batch, up to
  the order of the float sum over rows (GEMM blocking): about 1e-7 relative.
- Reduction order: ``reduction="sum"`` (default) lets MPI sum (for two ranks
  the result is ``g0 + g1``, exact and order-free since float addition is
  commutative); ``reduction="ordered"`` gathers every rank's gradient and adds
  them in rank order, ``((g0 + g1) + g2) + ...``, the same bits on every rank
  whatever algorithm the MPI library picks (memory: world_size arenas).
- Shards may differ in size: every rank runs as many steps as the largest
  shard needs; a rank out of rows contributes a zero gradient (weight 0).
- Dropout, noise and RReLU draw from a per-rank seed (rank 0 keeps the model's
  seed), so the ranks' masks differ, as independent workers' would.
- BatchNorm normalises with each rank's own batch statistics (as DDP without
  SyncBatchNorm). Its running statistics are averaged over the ranks at every
  epoch end (``sync_buffers="mean"``, default), taken from rank 0
  (``"broadcast"``), or left per rank (``None``).
- The epoch's loss and metrics are averaged over all ranks' rows; validation
  data (each rank passes its own shard, all or none) is evaluated on every rank
  and averaged, weighted by rows. Epoch logs, and hence EarlyStopping,
  ReduceLROnPlateau and the like, are the same on every rank. A stop requested
  by a callback on any rank stops every rank.
- Files: ModelCheckpoint and CSVLogger write on rank 0 only; progress bars show
  on rank 0 only.
"""
import os

import numpy as np

__all__ = ["init", "is_initialized", "rank", "world_size", "local_size", "comm", "barrier", "shard",
           "broadcast_model", "check_replicas", "evaluate", "allreduce_mean", "Options", "finalize"]

_state = {"comm": None, "MPI": None}


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError("nerve.distributed needs mpi4py and an MPI library: pip install 'nerve[mpi]' "
                          f"(mpi4py plus the mpich wheel), or mpi4py built against your cluster's MPI ({e})"
                          ) from None
    return MPI


def init(comm=None, threads="auto"):
    """Initialises MPI (mpi4py calls MPI_Init on import) and returns the communicator.

    comm: an mpi4py communicator to train over (default COMM_WORLD).
    threads: OpenMP threads per rank. "auto" (default): OMP_NUM_THREADS when
    set, otherwise the cores visible to this process divided by the ranks on
    this node (so N ranks on a node do not each start one thread per core); an
    int sets it; None leaves nerve's setting alone. Calling init again is a
    no-op that returns the same communicator (or switches to ``comm``).
    """
    MPI = _mpi()
    if not MPI.Is_initialized():  # pragma: no cover - mpi4py initialises on import by default
        MPI.Init()
    _state["MPI"] = MPI
    if comm is not None or _state["comm"] is None:
        _state["comm"] = comm if comm is not None else MPI.COMM_WORLD
    c = _state["comm"]
    if threads is not None:
        from . import set_num_threads

        if threads == "auto":
            if not os.environ.get("OMP_NUM_THREADS"):
                cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
                set_num_threads(max(1, (cores or 1) // local_size()))
        else:
            if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
                raise ValueError(f"threads must be 'auto', None or an int >= 1, got {threads!r}")
            set_num_threads(int(threads))
    return c


def is_initialized():
    return _state["comm"] is not None


def comm():
    """The communicator nerve trains over (init() first)."""
    if _state["comm"] is None:
        raise RuntimeError("call nerve.distributed.init() first")
    return _state["comm"]


def rank():
    """This process's rank in [0, world_size())."""
    return comm().Get_rank()


def world_size():
    """Number of ranks."""
    return comm().Get_size()


def local_size():
    """Ranks on this node (sharing memory with this one)."""
    MPI = _state["MPI"] or _mpi()
    node = comm().Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_size()
    finally:
        node.Free()


def barrier():
    comm().Barrier()


def finalize():
    """Optional: mpi4py finalizes MPI at exit by itself."""
    MPI = _state["MPI"] or _mpi()
    _state["comm"] = None
    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()


def shard(*arrays, rank=None, world_size=None):
    """This rank's contiguous block of rows of each array (the first
    ``n % world_size`` ranks get one row more). Returns one array, or a tuple
    for several; arrays must have the same number of rows. A tuple (e.g. the
    distillation target pair) is sharded element by element."""
    r = globals()["rank"]() if rank is None else int(rank)
    w = globals()["world_size"]() if world_size is None else int(world_size)
    if not 0 <= r < w:
        raise ValueError(f"rank must be in [0, {w}), got {r}")

    def rows(a):
        return len(a[0]) if isinstance(a, tuple) else len(a)

    n = {rows(a) for a in arrays}
    if len(n) != 1:
        raise ValueError(f"shard: arrays have different numbers of rows {sorted(n)}")
    n = n.pop()
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    stop = start + base + (1 if r < extra else 0)

    def cut(a):
        return tuple(np.asarray(p)[start:stop] for p in a) if isinstance(a, tuple) else np.asarray(a)[start:stop]

    out = tuple(cut(a) for a in arrays)
    return out[0] if len(out) == 1 else out


def allreduce_mean(values, weight=1.0):
    """Weighted mean over the ranks of a float or a dict of floats:
    sum_r weight_r * v_r / sum_r weight_r (weight: e.g. this rank's rows)."""
    MPI = _state["MPI"]
    if isinstance(values, dict):
        if comm().Get_size() == 1:
            # One rank's mean is its value: v * w / w can round off the last bit.
            return {k: float(v) for k, v in values.items()}
        keys = sorted(values)
        buf = np.array([float(values[k]) * weight for k in keys] + [float(weight)], dtype=np.float64)
        comm().Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        total = buf[-1] if buf[-1] > 0 else 1.0
        return {k: float(buf[i] / total) for i, k in enumerate(keys)}
    return allreduce_mean({"v": values}, weight)["v"]


def _arenas(model):
    """Distinct arenas holding the model's parameters, in parameter order."""
    return list({id(p._arena): p._arena for p in model.parameters()}.values())


def _state_arrays(model):
    """Every array that defines the training state, as writable views, in a fixed order."""
    arrays = [a.values(0, a.size) for a in _arenas(model) if a.size]
    arrays += list(model.buffers())
    opt = model.optimizer
    if opt is not None and opt.params:
        arrays += [opt._core.slot(i) for i in range(len(opt._core.slot_names))]
    return arrays


def broadcast_model(model, root=0):
    """Copies ``root``'s parameters, buffers, optimizer state (slots, step
    count, lr, kept scalars such as NAdam's mu product), random seed, random
    streams and step counter to every rank, in place."""
    c = comm()
    opt = model.optimizer
    scalars = {"seed": int(model._net.seed), "step": int(model._net.step), "stream": int(model._stream),
               "sizes": [int(a.size) for a in _state_arrays(model)]}
    if opt is not None and opt.params:
        scalars.update(iterations=int(opt._core.iterations), lr=float(opt._core.lr),
                       scalar_state=[float(v) for v in opt._core.scalar_state])
    got = c.bcast(scalars, root=root)
    if got["sizes"] != scalars["sizes"]:
        raise ValueError(f"rank {c.Get_rank()}: the model's state arrays {scalars['sizes']} differ from "
                         f"rank {root}'s {got['sizes']}: every rank must build the same model")
    for a in _state_arrays(model):
        if a.size:
            c.Bcast(a, root=root)
    model._net.seed = got["seed"]
    model._net.step = got["step"]
    if got["stream"] != model._stream:
        model._set_streams(got["stream"])  # the layers' random streams (and fit's shuffle key) follow rank 0
    if "iterations" in got:
        opt._core.iterations = got["iterations"]
        opt._core.lr = got["lr"]
        opt._core.scalar_state = got["scalar_state"]


def check_replicas(model):
    """Raises RuntimeError unless every rank holds bit-identical parameters,
    buffers and optimizer state (an allgather of a checksum of the bytes)."""
    import hashlib

    h = hashlib.sha256()
    for a in _state_arrays(model):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(str((int(model._net.step),)).encode())
    digests = comm().allgather(h.hexdigest())
    if len(set(digests)) != 1:
        bad = [r for r, d in enumerate(digests) if d != digests[0]]
        raise RuntimeError(f"model replicas differ: ranks {bad} do not match rank 0")
    return digests[0]


def evaluate(model, x, y, batch_size=256):
    """``model.evaluate`` on this rank's shard, averaged over the ranks
    (weighted by rows): the value one process would get on all shards, for
    losses and metrics that are means over rows."""
    logs = model.evaluate(x, y, batch_size=batch_size)
    return allreduce_mean(logs, weight=len(x))


class Options:
    """Settings of ``fit(..., distributed=Options(...))`` (``True`` = defaults).

    reduction: "sum" (MPI_Allreduce in place, default) or "ordered" (allgather,
      then a rank-order sum: the same bits whatever MPI's algorithm).
    sync_buffers: "mean" (default), "broadcast" or None: what happens to layer
      buffers (BatchNorm running statistics) at every epoch end.
    check: verify at the end of fit that all replicas are bit-identical (an
      allgather of a checksum; RuntimeError otherwise).
    """

    def __init__(self, reduction="sum", sync_buffers="mean", check=False):
        if reduction not in ("sum", "ordered"):
            raise ValueError(f"reduction must be 'sum' or 'ordered', got {reduction!r}")
        if sync_buffers not in ("mean", "broadcast", None):
            raise ValueError(f"sync_buffers must be 'mean', 'broadcast' or None, got {sync_buffers!r}")
        self.reduction, self.sync_buffers, self.check = reduction, sync_buffers, bool(check)


def _check_finite(x, values):
    """ValueError naming the first row with NaN/Inf in x or the target values
    (checked once per fit, in blocks of rows: no copy of x)."""
    for name, a in (("x", x), ("y", values)):
        if a is None:
            continue
        a = a.reshape(len(a), -1)
        for start in range(0, len(a), 4096):
            ok = np.isfinite(a[start: start + 4096]).all(axis=1)
            if not ok.all():
                row = start + int(np.flatnonzero(~ok)[0])
                col = int(np.flatnonzero(~np.isfinite(a[row]))[0])
                raise ValueError(f"{name} contains NaN or Inf at row {row}, column {col}")


def _per_rank_seed(seed, r):
    if r == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), 0x6D7069, int(r)]).generate_state(1, np.uint64)[0])


class _Trainer:
    """The distributed part of one ``fit`` call (model.py drives it)."""

    def __init__(self, model, options, n_local, batch_size, has_validation, local_checks=None):
        if not is_initialized():
            init()
        if options is True:
            options = Options()
        if not isinstance(options, Options):
            raise ValueError(f"distributed must be True, False or nerve.distributed.Options, got {options!r}")
        self.model, self.options = model, options
        self.comm = comm()
        self.MPI = _state["MPI"]
        self.rank, self.world = self.comm.Get_rank(), self.comm.Get_size()
        self.batch_size = int(batch_size)
        # Every rank must agree on what collectives it will run, and a check
        # that fails on one rank fails on all (instead of leaving the others
        # waiting in the first allreduce).
        error = None
        try:
            if local_checks is not None:
                local_checks()
        except ValueError as e:
            error = str(e)
        info = self.comm.allgather((int(n_local), bool(has_validation), self.batch_size, error))
        failed = [(r, i[3]) for r, i in enumerate(info) if i[3] is not None]
        if failed:
            raise ValueError("distributed fit: " + "; ".join(f"rank {r}: {msg}" for r, msg in failed))
        self.counts = np.array([i[0] for i in info], dtype=np.int64)
        if len({i[1] for i in info}) != 1:
            raise ValueError("distributed fit: validation data must be given on every rank or on none")
        if len({i[2] for i in info}) != 1:
            raise ValueError(f"distributed fit: batch_size differs between ranks: {[i[2] for i in info]}")
        self.steps = int(-(-self.counts.max() // self.batch_size))
        broadcast_model(model, root=0)
        self.base_seed = int(model._net.seed)
        model._net.seed = _per_rank_seed(self.base_seed, self.rank)
        self.grads = [a.grads(0, a.size) for a in _arenas(model) if a.size]
        for g in self.grads:
            # Entries no backward writes (frozen layers) must be zero on every
            # rank, or the sum would grow them step after step.
            g[...] = 0.0
        self.gathered = ([np.empty((self.world, g.size), np.float32) for g in self.grads]
                         if options.reduction == "ordered" else None)

    def rows_in_step(self, step):
        """Rows each rank trains on in global step `step`."""
        return np.clip(self.counts - step * self.batch_size, 0, self.batch_size)

    def reduce_gradients(self):
        MPI = self.MPI
        if self.gathered is None:
            for g in self.grads:
                self.comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
            return
        for g, buf in zip(self.grads, self.gathered):
            self.comm.Allgather(g, buf)
            np.copyto(g, buf[0])
            for r in range(1, self.world):
                g += buf[r]

    def train_batches(self, net, x, labels, values, rows, first, nbatches, loss, optimizer, count, weights=None):
        """Runs global steps first .. first + nbatches - 1 on this rank's `rows`
        (the epoch order's slice for them). Returns (losses, correct, sizes):
        this rank's per-batch losses (with the penalty), correct counts and rows."""
        losses = np.zeros(nbatches, dtype=np.float64)
        correct = np.zeros(nbatches, dtype=np.int64)
        sizes = np.zeros(nbatches, dtype=np.float64)
        bs = self.batch_size
        for b in range(nbatches):
            per_rank = self.rows_in_step(first + b)
            total = int(per_rank.sum())
            mine = int(per_rank[self.rank])
            if mine:
                idx = rows[b * bs: b * bs + mine]
                loss_b, corr = net.compute_gradients_rows(x, labels, values, idx, loss, count, mine / total,
                                                          weights)
            else:
                loss_b, corr = 0.0, 0
                for g in self.grads:
                    g[...] = 0.0
            self.reduce_gradients()
            penalty = net.apply_update(optimizer)
            losses[b] = loss_b + penalty if mine else penalty
            correct[b] = corr
            sizes[b] = mine
        return losses, correct, sizes

    def agree_stop(self, stop):
        """True when any rank asks to stop."""
        return bool(self.comm.allreduce(bool(stop), op=self.MPI.LOR))

    def epoch_logs(self, loss_sum, correct, seen):
        buf = np.array([loss_sum, correct, seen], dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return float(buf[0]), int(buf[1]), int(buf[2])

    def validation_logs(self, logs, rows):
        return allreduce_mean(logs, weight=rows)

    def sync_buffers(self):
        mode = self.options.sync_buffers
        bufs = [b for b in self.model.buffers() if b.size]
        if mode is None or not bufs:
            return
        for b in bufs:
            if mode == "broadcast":
                self.comm.Bcast(b, root=0)
            else:
                total = np.empty_like(b)
                self.comm.Allreduce(b, total, op=self.MPI.SUM)
                b[...] = total / np.float32(self.world)

    def finish(self):
        self.model._net.seed = self.base_seed
        if self.options.check:
            check_replicas(self.model)
