"""Datasets: scikit-learn's handwritten digits, Fashion-MNIST from IDX files,
CSV / TSV / TXT / NPZ files, and a seeded train/test split.

Images are scaled to [0, 1] floats (float32) and flattened to rows; labels are int64.
"""
import csv
import gzip
import math
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
    count = math.prod(shape)  # exact: np.prod wraps around in int64 for hostile headers
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


TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".dat")
# Task rule of load_file(task="auto") and `nerve train --task auto`.
MAX_AUTO_CLASSES = 50


def _number(v):
    try:
        return float(v)
    except ValueError:
        return None


def _sniff_delimiter(path, lines):
    """The delimiter of a text table: the one of , ; tab | that splits every
    sampled line into the same number (> 1) of fields, preferring the most
    fields; else whitespace (None)."""
    best, best_score = None, None
    for d in (",", ";", "\t", "|"):
        split = [next(csv.reader([ln], delimiter=d)) for ln in lines]
        counts = [len(f) for f in split]
        mode = max(set(counts), key=counts.count)
        if mode < 2:
            continue
        # Prefer the delimiter that splits the most lines into the same number
        # of fields (a ragged line is then reported by its line number), then
        # the one whose fields read as numbers (a ';' file with decimal commas
        # splits evenly on ',' too), then the one with more fields.
        body = [v for f in split[1:] or split for v in f]
        score = (counts.count(mode) / len(counts), sum(_number(v) is not None for v in body) / max(len(body), 1),
                 mode)
        if best_score is None or score > best_score:
            best, best_score = d, score
    if best is None and any(len(ln.split()) > 1 for ln in lines):
        return None
    if best is None:
        raise ValueError(f"{path}: could not find a delimiter (tried , ; tab | and whitespace); each line "
                         f"needs feature columns and a label column")
    return best


def read_table(path, delimiter="auto", header="auto", index_column="auto"):
    """Reads a delimited text table into (rows of strings, header or None, info).

    delimiter: "auto" sniffs , ; tab | or whitespace from the first lines.
    header: "auto" (the first line is a header when one of its fields is not a
    number while the line below has numbers there), True or False.
    index_column: "auto" drops the first column when its header is empty,
    "Unnamed: 0" or "index" (what pandas' to_csv writes by default), or, in a
    file without a header, when it holds exactly 0, 1, ..., n-1 or 1, ..., n;
    True drops it; False keeps it.
    Positions in errors: row and column are 0-based data positions (as numpy
    and fit count); "line" is the 1-based line of the file.
    """
    import itertools

    with open(path, newline="") as fh:
        text = fh.read()
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) < 2:
        raise ValueError(f"{path}: a table needs at least 2 lines, found {len(lines)}")
    if delimiter == "auto":
        delimiter = _sniff_delimiter(path, [ln for _, ln in itertools.islice(lines, 50)])
    split = (lambda ln: ln.split()) if delimiter is None else (lambda ln: next(csv.reader([ln], delimiter=delimiter)))
    rows = [(no, [f.strip() for f in split(ln)]) for no, ln in lines]
    if header == "auto":
        first, second = rows[0][1], rows[1][1]
        header = any(_number(a) is None and _number(b) is not None for a, b in zip(first, second)) or \
            (all(_number(a) is None for a in first) and any(_number(b) is not None for b in second))
    names = None
    if header:
        names, rows = rows[0][1], rows[1:]
    width = len(names) if names is not None else len(rows[0][1])
    for r, (no, fields) in enumerate(rows):
        if len(fields) != width:
            raise ValueError(f"{path}: line {no} (row {r}) has {len(fields)} fields, expected {width}")
    drop = False
    if index_column == "auto":
        first_name = names[0].strip().lower() if names is not None else None
        values = [_number(f[0]) for _, f in rows]
        n = len(rows)
        sequential = all(v is not None for v in values) and (
            values == [float(i) for i in range(n)] or values == [float(i + 1) for i in range(n)])
        # A named first column is data even when it counts 0, 1, 2, ...
        drop = first_name in ("", "unnamed: 0", "index") or (names is None and sequential)
    elif index_column:
        drop = True
    if drop:
        rows = [(no, f[1:]) for no, f in rows]
        names = names[1:] if names is not None else None
    info = {"delimiter": delimiter, "header": names, "index_column_dropped": bool(drop)}
    return rows, names, info


def _auto_task(y, from_float_dtype=False):
    if y.dtype.kind in "OUS":
        return "classification"
    if from_float_dtype:
        return "regression"
    yf = y.astype(np.float64)
    if not np.all(yf == np.round(yf)) or len(np.unique(yf)) > MAX_AUTO_CLASSES:
        return "regression"
    return "classification"


def load_table(path, task="auto", delimiter="auto", header="auto", index_column="auto"):
    """A data set from a CSV / TSV / TXT (last column = label) or NPZ (arrays
    x and y) file, as (x float32 (n, features), y, info).

    task: "classification" gives y as int64 class indices 0..K-1 with
    info["class_names"] the original labels in that order (strings or
    numbers, sorted); "regression" gives float32 y; "auto" decides by the
    rule: regression when the labels are numbers and (stored as floats in an
    .npz, or some value is not a whole number, or there are more than
    MAX_AUTO_CLASSES = 50 distinct values); otherwise classification (labels
    that are not numbers are always classes). info also holds "task",
    "delimiter", "header" (column names or None), "index_column_dropped".
    delimiter, header, index_column: see read_table.
    """
    path = os.fspath(path)
    if task not in ("auto", "classification", "regression"):
        raise ValueError(f"task must be 'auto', 'classification' or 'regression', got {task!r}")
    info = {"delimiter": None, "header": None, "index_column_dropped": False}
    float_dtype = False
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as f:
                if "x" not in f.files or "y" not in f.files:
                    raise ValueError(f"{path}: an NPZ dataset needs arrays named 'x' and 'y', found {f.files}")
                x, y = np.asarray(f["x"]), np.asarray(f["y"])
        except ValueError:
            raise
        except Exception as e:  # a corrupt archive: BadZipFile, zlib.error, EOFError, ... (found by fuzz_table)
            raise ValueError(f"{path}: not a readable NPZ file ({type(e).__name__}: {e})") from e
        if x.ndim == 0 or y.ndim == 0:
            raise ValueError(f"{path}: x and y must be arrays, not scalars, got shapes "
                             f"{np.shape(x)} and {np.shape(y)}")
        if x.dtype.kind not in "fiub":
            raise ValueError(f"{path}: x must be numeric, got dtype {x.dtype}")
        float_dtype = y.dtype.kind == "f"
        x = x.reshape(len(x), -1)
    elif path.lower().endswith(TEXT_SUFFIXES):
        rows, names, info = read_table(path, delimiter, header, index_column)
        if len(rows[0][1]) < 2:
            raise ValueError(f"{path}: a dataset needs feature columns and a final label column")
        x = np.empty((len(rows), len(rows[0][1]) - 1), np.float64)
        for r, (no, fields) in enumerate(rows):
            for c, v in enumerate(fields[:-1]):
                num = _number(v)
                if num is None:
                    col = f" ({names[c]!r})" if names else ""
                    raise ValueError(f"{path}: line {no} (row {r}, column {c}{col}): {v!r} is not a number; "
                                     f"feature columns must be numeric (only the last, the label, may hold names)")
                x[r, c] = num
        labels = [f[-1] for _, f in rows]
        nums = [_number(v) for v in labels]
        y = np.array(nums, np.float64) if all(v is not None for v in nums) else np.array(labels, dtype=object)
    else:
        raise ValueError(f"{path}: expected a .csv, .tsv, .txt, .dat or .npz file")
    if not np.all(np.isfinite(x)):
        r, c = (int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise ValueError(f"{path}: x contains NaN or Inf at row {r}, column {c} (0-based)")
    chosen = _auto_task(y, float_dtype) if task == "auto" else task
    info["task"] = chosen
    if chosen == "classification":
        if y.ndim != 1:
            raise ValueError(f"{path}: classification needs one label per row, got y of shape {y.shape}")
        if y.dtype.kind == "O":
            y = y.astype(str)
        classes, codes = np.unique(y, return_inverse=True)
        info["class_names"] = [c.item() if isinstance(c, np.generic) else c for c in classes]
        if all(isinstance(c, float) and c == int(c) for c in info["class_names"]):
            info["class_names"] = [int(c) for c in info["class_names"]]
        y = codes.astype(np.int64)
    else:
        if y.dtype.kind not in "fiub":
            raise ValueError(f"{path}: task 'regression' needs numeric labels, got {y[:3].tolist()!r}, ...")
        y = y.astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32), y, info


def load_file(path):
    """A CSV / TSV / TXT (last column = label; header, delimiter and an index
    column detected) or NPZ (arrays x and y) file as (x, y): load_table with
    task="auto". Classification labels come back as int64 indices into the
    sorted class names (load_table's info["class_names"]); regression labels as float32.
    """
    x, y, _ = load_table(path)
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
