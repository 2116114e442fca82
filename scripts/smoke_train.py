"""Imports nerve, prints its CPU level and trains a small classifier.

Used by scripts/build_wheel.sh (the installed wheel) and scripts/qemu_levels.sh
(emulated CPUs). EXPECT_LEVEL=<level> asserts the level nerve picked.
Exits non-zero when the level is not the expected one or the model does not learn.
"""
import os
import sys

import numpy as np

import nerve as nv


def main():
    info = nv.build_info()
    print("nerve", nv.__version__, "from", os.path.dirname(nv.__file__))
    print("cpu_level:", info["cpu_level"], "cpu_levels:", ", ".join(info["cpu_levels"]), "simd:", info["simd"])
    want = os.environ.get("EXPECT_LEVEL")
    if want and info["cpu_level"] != want:
        print(f"FAIL: cpu_level {info['cpu_level']!r}, expected {want!r}")
        return 1
    n = int(os.environ.get("SMOKE_SAMPLES", "2000"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 20)).astype(np.float32)
    y = (x[:, :10].sum(1) > x[:, 10:].sum(1)).astype(np.int64)
    cut = n * 4 // 5
    nv.manual_seed(0)
    model = nv.Sequential([nv.layers.Dense(64, activation="relu"), nv.layers.Dense(2)], input_dim=20)
    model.compile(optimizer=nv.optimizers.Adam(lr=3e-3), loss="cross_entropy")
    model.fit(x[:cut], y[:cut], epochs=int(os.environ.get("SMOKE_EPOCHS", "15")), batch_size=64, verbose=0)
    acc = float((model.predict(x[cut:]).argmax(1) == y[cut:]).mean())
    print(f"test accuracy {acc:.3f}")
    if acc < 0.9:
        print("FAIL: the model did not learn")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
