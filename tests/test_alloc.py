"""No heap allocation per training step, counted by a malloc hook.

nv._core.alloc_count() only sees nerve's own aligned buffers; GEMM packing
buffers, std::string error messages built on the success path or a
std::vector returned by a helper would escape it. Here every malloc, calloc,
realloc, posix_memalign and aligned_alloc of the process is counted by a tiny
LD_PRELOAD library (compiled by the test), in a subprocess.

The claim tested: one call of Network.train_batches (what fit() runs per
epoch) allocates the same number of times whether it runs 3 steps or 12, so
a step after the first allocates nothing. (Each Python -> C++ call itself costs
pybind11 one small argument vector; that is per call, not per step.)
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

SHIM = r"""
#include <stddef.h>
extern void* __libc_malloc(size_t);
extern void* __libc_calloc(size_t, size_t);
extern void* __libc_realloc(void*, size_t);
extern void* __libc_memalign(size_t, size_t);
static long long calls = 0;
long long nerve_test_malloc_calls(void) { return __atomic_load_n(&calls, __ATOMIC_RELAXED); }
static void note(void) { __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED); }
void* malloc(size_t n) { note(); return __libc_malloc(n); }
void* calloc(size_t a, size_t b) { note(); return __libc_calloc(a, b); }
void* realloc(void* p, size_t n) { note(); return __libc_realloc(p, n); }
int posix_memalign(void** out, size_t al, size_t n) {
  note(); void* p = __libc_memalign(al, n); if (!p) return 12; *out = p; return 0; }
void* aligned_alloc(size_t al, size_t n) { note(); return __libc_memalign(al, n); }
void* memalign(size_t al, size_t n) { note(); return __libc_memalign(al, n); }
"""

CHILD = textwrap.dedent("""
    import ctypes, json, sys
    import numpy as np
    import nerve as nv

    calls = ctypes.CDLL(None).nerve_test_malloc_calls
    calls.restype = ctypes.c_longlong
    out = []
    def zoo():
        # Every layer type and a few activations with other backward paths.
        L = nv.layers
        return [L.Dense(64, activation="elu"), L.BatchNorm(), L.Dropout(0.2),
                L.Residual([L.Dense(64, activation="tanh"), L.Dense(64)]), L.PReLU(shared=False),
                L.GaussianNoise(0.1), L.Swish(), L.Maxout(32, 3), L.AlphaDropout(0.1),
                L.Dense(32, activation="gelu"), L.Activation("rrelu"), L.Activation("crelu"), L.Dense(10)]

    for threads, batch, sizes in json.loads(sys.argv[1]):
        nv.set_num_threads(threads)
        if sizes == "zoo":
            sizes = [40, 10]
            layers = zoo()
        else:
            layers = [nv.layers.Dense(u, activation="relu") for u in sizes[1:-1]]
            layers.append(nv.layers.Dense(sizes[-1]))
        m = nv.Sequential(layers, input_dim=sizes[0])
        m.compile(optimizer=nv.optimizers.Adam(lr=1e-3), loss="cross_entropy")
        r = np.random.default_rng(0)
        x = r.standard_normal((12 * batch, sizes[0])).astype(np.float32)
        y = r.integers(0, sizes[-1], 12 * batch)
        m.fit(x[:batch], y[:batch], epochs=1, batch_size=batch, verbose=0)  # builds, plans
        labels, values = m._split_y(y, len(y))
        net, spec, opt = m._net, m.loss._spec, m.optimizer._core
        short = np.arange(3 * batch, dtype=np.int64)
        long = np.arange(12 * batch, dtype=np.int64)
        counts = {}
        # Each length runs twice first: numpy's small-array cache and the
        # first-step growths settle; the third runs are the ones compared.
        runs = (("w1", short), ("w2", long), ("w3", short), ("w4", long), ("short", short), ("long", long))
        for name, order in runs:
            c0 = calls()
            net.train_batches(x, labels, values, order, batch, spec, opt, False)
            counts[name] = calls() - c0
        out.append([threads, batch, counts])
    print(json.dumps(out))
""")


def _compile_shim(tmp_path):
    cc = shutil.which(os.environ.get("CC", "") or (sysconfig.get_config_var("CC") or "cc").split()[0]) or \
        shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler to build the malloc-counting hook")
    src = tmp_path / "count_malloc.c"
    src.write_text(SHIM)
    lib = tmp_path / "count_malloc.so"
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc hook (LD_PRELOAD)")
def _run_counting(lib, child, cases):
    """Runs `child` (a script taking the JSON cases) with the malloc-counting
    shim preloaded; returns its JSON result, one entry per case."""
    import json

    import nerve

    env = dict(os.environ, LD_PRELOAD=str(lib))
    # The child imports the same nerve as this process (installed or in-tree).
    root = os.path.dirname(os.path.dirname(os.path.abspath(nerve.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", child, json.dumps(cases)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    results = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(results) == len(cases)
    return results


def test_train_step_allocates_nothing_after_the_first(tmp_path):
    lib = _compile_shim(tmp_path)
    # Reference MLP at batch 1 (matrix-vector path), 32 (column tiles) and
    # 300 (uneven row tiles), on 1 and 2 threads (per-thread GEMM buffers).
    cases = [[1, 1, [784, 512, 256, 10]], [1, 32, [784, 512, 256, 10]],
             [2, 32, [784, 512, 256, 10]], [2, 300, [784, 512, 256, 10]],
             [1, 64, [20] + [16] * 6 + [3]], [1, 32, "zoo"], [2, 300, "zoo"]]
    results = _run_counting(lib, CHILD, cases)
    for threads, batch, counts in results:
        # The hook works (the call allocates its result arrays) ...
        assert counts["short"] > 0, counts
        # ... and 9 more steps cost no allocation at all.
        assert counts["long"] == counts["short"], (threads, batch, counts)


INFERENCE_CHILD = textwrap.dedent("""
    import ctypes, json, sys
    import numpy as np
    import nerve as nv

    calls = ctypes.CDLL(None).nerve_test_malloc_calls
    calls.restype = ctypes.c_longlong
    out = []
    for threads, batch in json.loads(sys.argv[1]):
        nv.set_num_threads(threads)
        nv.manual_seed(0)
        L = nv.layers
        m = nv.Sequential([L.Dense(256, activation="relu"), L.BatchNorm(), L.Dropout(0.1),
                           L.Dense(128, activation="crelu"), L.Dense(64, activation="gelu"), L.Dense(10)],
                          input_dim=100)
        nv.pruning.prune_magnitude(m, 0.9)
        net = m.optimize_for_inference()._net
        r = np.random.default_rng(0)
        short = r.standard_normal((3 * batch, 100)).astype(np.float32)
        long = r.standard_normal((12 * batch, 100)).astype(np.float32)
        counts = {}
        for name, x in (("w1", short), ("w2", long), ("w3", short), ("w4", long), ("short", short), ("long", long)):
            c0 = calls()
            net.predict(x, batch)
            counts[name] = calls() - c0
        out.append([threads, batch, counts])
    print(json.dumps(out))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc hook (LD_PRELOAD)")
def test_optimized_predict_allocates_nothing_per_batch(tmp_path):
    # optimize_for_inference(): sparse kernels (gather path at batch 1, panels
    # above), a dense GEMM and an activation that doubles the width; a predict
    # call of 12 batches allocates exactly what one of 3 batches does (its result).
    lib = _compile_shim(tmp_path)
    cases = [[1, 1], [2, 1], [1, 40], [2, 300]]
    results = _run_counting(lib, INFERENCE_CHILD, cases)
    for threads, batch, counts in results:
        assert counts["short"] > 0, counts
        assert counts["long"] == counts["short"], (threads, batch, counts)


RECURRENT_CHILD = textwrap.dedent("""
    import ctypes, json, sys
    import numpy as np
    import nerve as nv

    calls = ctypes.CDLL(None).nerve_test_malloc_calls
    calls.restype = ctypes.c_longlong
    L = nv.layers
    out = []
    for threads, batch, kind in json.loads(sys.argv[1]):
        nv.set_num_threads(threads)
        steps = 9
        r = np.random.default_rng(0)
        if kind == "tokens":
            layers = [L.Embedding(30, 8), L.LSTM(16, return_sequences=True, bidirectional=True), L.Dropout(0.1),
                      L.GRU(12), L.Dense(3)]
            x = r.integers(0, 30, (12 * batch, steps))
            y = r.integers(0, 3, 12 * batch)
        else:  # float sequences, a per-step output
            layers = [L.SimpleRNN(16, return_sequences=True), L.GRU(8, return_sequences=True, bidirectional=True),
                      L.LSTM(8, return_sequences=True), L.Dense(3)]
            x = r.standard_normal((12 * batch, steps, 4)).astype(np.float32)
            y = r.integers(0, 3, (12 * batch, steps))
        m = nv.Sequential(layers)
        m.compile(optimizer=nv.optimizers.Adam(lr=1e-3), loss="cross_entropy")
        m.fit(x[:batch], y[:batch], epochs=1, batch_size=batch, verbose=0)  # builds, plans
        rows, info = m._input(x)
        labels, values = m._split_y(info.flat_y(y), info.samples * info.out_steps)
        net, spec, opt = m._net, m.loss._spec, m.optimizer._core
        short = np.arange(3 * batch, dtype=np.int64)
        long = np.arange(12 * batch, dtype=np.int64)
        counts = {}
        runs = (("w1", short), ("w2", long), ("w3", short), ("w4", long), ("short", short), ("long", long))
        for name, order in runs:
            c0 = calls()
            net.train_batches(rows, labels, values, order, batch, spec, opt, False, None, steps=steps)
            counts[name] = calls() - c0
        out.append([threads, batch, kind, counts])
    print(json.dumps(out))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc hook (LD_PRELOAD)")
def test_recurrent_train_step_allocates_nothing_after_the_first(tmp_path):
    lib = _compile_shim(tmp_path)
    cases = [[1, 1, "tokens"], [2, 32, "tokens"], [1, 8, "floats"], [2, 40, "floats"]]
    results = _run_counting(lib, RECURRENT_CHILD, cases)
    for threads, batch, kind, counts in results:
        assert counts["short"] > 0, counts
        assert counts["long"] == counts["short"], (threads, batch, kind, counts)
