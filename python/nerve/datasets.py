"""Datasets: scikit-learn's handwritten digits, Fashion-MNIST from IDX files,
CSV / NPZ files, and a seeded train/test split.

Images are scaled to [0, 1] floats (float32) and flattened to rows; labels are int64.
"""
import gzip
import os
import struct

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """Reads an IDX file (the MNIST format), gzip-compressed or not, into a numpy array.

    Header: two zero bytes, a type code, the number of dimensions, then one
    big-endian uint32 per dimension (LeCun et al., the MNIST database).
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic)")
    dtype = _IDX_TYPES.get(data[2])
    if dtype is None:
        raise ValueError(f"{path}: unknown IDX type code 0x{data[2]:02x}")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4: 4 + 4 * ndim])
    count = int(np.prod(shape)) if ndim else 1
    itemsize = np.dtype(dtype).itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != count * itemsize:
        raise ValueError(f"{path}: IDX body has {len(body)} bytes, header says {count * itemsize}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(np.dtype(dtype).newbyteorder("="))


def load_digits():
    """scikit-learn's 8x8 handwritten digits (1,797 images): x (n, 64) in [0, 1], y (n,) int64.

    Needs the optional extra: pip install "nerve[datasets]" (scikit-learn).
    """
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError:
        raise ImportError('load_digits needs scikit-learn: pip install "nerve[datasets]"') from None
    d = _sk_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def _find(directory, stem):
    for name in (stem, stem + ".gz"):
        p = os.path.join(directory, name)
        if os.path.exists(p):
            return p
    return None


def load_fashion_mnist(path=None):
    """Fashion-MNIST (Xiao et al., 2017): ((x_train, y_train), (x_test, y_test)),
    x as (n, 784) float32 in [0, 1], y int64.

    Reads the four IDX files from `path`, by default /usr/share/datasets/fashion-mnist
    (Debian: apt-get install dataset-fashion-mnist).
    """
    directory = os.fspath(path) if path is not None else FASHION_MNIST_DIR
    files = {}
    for key, stem in (("xtr", "train-images-idx3-ubyte"), ("ytr", "train-labels-idx1-ubyte"),
                      ("xte", "t10k-images-idx3-ubyte"), ("yte", "t10k-labels-idx1-ubyte")):
        found = _find(directory, stem)
        if found is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {stem}[.gz] not found in {directory}. On Debian/Ubuntu: "
                "sudo apt-get update && sudo apt-get install dataset-fashion-mnist; or download the "
                "four IDX files and pass load_fashion_mnist(path=DIRECTORY).")
        files[key] = found

    def images(p):
        a = read_idx(p)
        return (a.reshape(a.shape[0], -1) / 255.0).astype(np.float32)

    return ((images(files["xtr"]), read_idx(files["ytr"]).astype(np.int64)),
            (images(files["xte"]), read_idx(files["yte"]).astype(np.int64)))


def load_file(path):
    """A CSV (last column = label; header row allowed) or NPZ (arrays x and y) file as (x, y).

    Integer-valued labels become int64 class labels; other labels stay float32 (regression).
    """
    path = os.fspath(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files or "y" not in f.files:
                raise ValueError(f"{path}: an NPZ dataset needs arrays named 'x' and 'y', found {f.files}")
            x, y = f["x"], f["y"]
    elif path.endswith(".csv"):
        with open(path) as fh:
            first = fh.readline()
        skip = 0
        try:
            [float(v) for v in first.strip().split(",")]
        except ValueError:
            skip = 1
        data = np.loadtxt(path, delimiter=",", skiprows=skip, dtype=np.float64, ndmin=2)
        if data.shape[1] < 2:
            raise ValueError(f"{path}: a CSV dataset needs feature columns and a final label column")
        x, y = data[:, :-1], data[:, -1]
    else:
        raise ValueError(f"{path}: expected a .csv or .npz file")
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    y = np.asarray(y)
    if y.ndim == 1 and y.dtype.kind == "f" and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    elif y.dtype.kind in "iu":
        y = y.astype(np.int64)
    else:
        y = y.astype(np.float32)
    return x, y


def train_test_split(x, y, test_size=0.2, seed=0):
    """Shuffles with `seed` and splits off `test_size` (a fraction or a count) for testing.

    Returns x_train, x_test, y_train, y_test (scikit-learn's order).
    """
    x = np.asarray(x)
    y = np.asarray(y)
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} rows but y has {len(y)}")
    n_test = int(round(test_size * n)) if isinstance(test_size, float) else int(test_size)
    if not 0 < n_test < n:
        raise ValueError(f"test_size={test_size} leaves no training or test rows out of {n}")
    order = np.random.Generator(np.random.Philox(key=int(seed))).permutation(n)
    test, train = order[:n_test], order[n_test:]
    return x[train], x[test], y[train], y[test]


def standardize(x_train, *others):
    """Scales features to zero mean and unit variance using x_train's statistics."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    return tuple(((a - mean) / std).astype(np.float32) for a in (x_train, *others))
