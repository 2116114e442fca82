"""A small, dependency-free reader and writer of the safetensors format.

The format (as written by the ``safetensors`` package and read by PyTorch,
JAX and Hugging Face tools): an unsigned 64-bit little-endian header length
``N``; ``N`` bytes of UTF-8 JSON mapping each tensor name to ``{"dtype",
"shape", "data_offsets": [begin, end]}`` (offsets relative to the end of the
header), plus an optional ``"__metadata__"`` object of string → string; then
the raw little-endian, C-order tensor bytes. The writer pads the header with
spaces to a multiple of 8 bytes, as the reference implementation does, so
the data is aligned.

Reading is bounded and validated before anything is allocated: the header
length must fit in the file and under :data:`MAX_HEADER_BYTES`; every entry's
dtype must be known, its shape a list of non-negative ints, its byte range
inside the data section and exactly ``prod(shape) * itemsize`` long, and the
ranges may not overlap (the reference loader refuses the same files). A
hostile file raises ``ValueError``; it never makes the reader allocate more
than the file holds.

``save_file(tensors, path, metadata=None)`` / ``load_file(path)`` mirror
``safetensors.numpy``'s functions of the same names (numpy arrays in and
out). ``Sequential.save_weights`` / ``load_weights`` use them.
"""
import json
import os
import struct
import tempfile

import numpy as np

# The header of a model's weights is a few KB; 100 MB is the reference
# implementation's own limit.
MAX_HEADER_BYTES = 100 << 20

# safetensors dtype tag -> numpy dtype (little-endian). BF16 has no numpy
# type: it is read as uint16 and widened to float32 (its top 16 bits).
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"), "BF16": np.dtype("<u2"),
}
_TAGS = {np.dtype(v).newbyteorder("<") if v.itemsize > 1 else v: k
         for k, v in _DTYPES.items() if k != "BF16"}


def _tag(dtype):
    dt = np.dtype(dtype)
    key = dt.newbyteorder("<") if dt.itemsize > 1 else dt
    if key not in _TAGS:
        raise ValueError(f"safetensors: dtype {dt} has no safetensors tag (supported: "
                         f"{', '.join(sorted(str(d) for d in _TAGS))})")
    return _TAGS[key], key


def dumps(tensors, metadata=None):
    """The file's bytes for {name: array}."""
    if not isinstance(tensors, dict):
        raise ValueError(f"safetensors: expected a dict of name -> array, got {type(tensors).__name__}")
    header, blobs, offset = {}, [], 0
    for name in tensors:
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"safetensors: tensor names must be non-empty strings other than "
                             f"'__metadata__', got {name!r}")
    arrays = {name: np.asarray(v) for name, v in tensors.items()}
    # Widest dtype first, then by name, as the reference writer: every tensor
    # then starts at a multiple of its own item size.
    for name in sorted(arrays, key=lambda n: (-arrays[n].dtype.itemsize, n)):
        arr = arrays[name]
        tag, dt = _tag(arr.dtype)
        data = np.ascontiguousarray(arr, dtype=dt).tobytes()
        header[name] = {"dtype": tag, "shape": [int(s) for s in arr.shape],
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in metadata.items()):
            raise ValueError("safetensors: metadata must be a dict of str -> str")
        header = {"__metadata__": dict(metadata), **header}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def save_file(tensors, path, metadata=None):
    """Writes {name: numpy array} to `path` (written to a temporary file and
    renamed, so an interrupted save leaves any previous file intact)."""
    data = dumps(tensors, metadata)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".nerve-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _parse_header(raw, data_size, where):
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{where}: the safetensors header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{where}: the safetensors header must be a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise ValueError(f"{where}: __metadata__ must be an object of string -> string")
    entries = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{where}: tensor {name!r}: expected exactly the keys dtype, shape, "
                             f"data_offsets")
        tag, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(tag, str) or tag not in _DTYPES:
            raise ValueError(f"{where}: tensor {name!r}: unknown dtype {tag!r} "
                             f"(known: {', '.join(sorted(_DTYPES))})")
        if not isinstance(shape, list) or len(shape) > 64 or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise ValueError(f"{where}: tensor {name!r}: shape must be a list of non-negative ints, "
                             f"got {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise ValueError(f"{where}: tensor {name!r}: data_offsets must be [begin, end], got {offs!r}")
        begin, end = offs
        if not 0 <= begin <= end <= data_size:
            raise ValueError(f"{where}: tensor {name!r}: data_offsets {offs} fall outside the "
                             f"{data_size} data bytes the file holds")
        count = 1
        for s in shape:  # Python ints: no overflow; bounded by the check below
            count *= s
        if count * _DTYPES[tag].itemsize != end - begin:
            raise ValueError(f"{where}: tensor {name!r}: shape {shape} of {tag} needs "
                             f"{count * _DTYPES[tag].itemsize} bytes, data_offsets give {end - begin}")
        entries.append((begin, end, name, tag, tuple(shape)))
    entries.sort()
    for (b0, e0, n0, _, _), (b1, _, n1, _, _) in zip(entries, entries[1:]):
        if b1 < e0:
            raise ValueError(f"{where}: tensors {n0!r} and {n1!r} overlap in the data section")
    return entries, metadata


def _decode(buf, tag, shape):
    arr = np.frombuffer(buf, dtype=_DTYPES[tag]).reshape(shape)
    if tag == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(_DTYPES[tag].newbyteorder("="), copy=True)


def read(f, size, where="safetensors"):
    """(tensors, metadata) from a binary file object positioned at the start of
    a safetensors blob of `size` bytes."""
    if size < 8:
        raise ValueError(f"{where}: {size} bytes is too short for a safetensors file")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > min(MAX_HEADER_BYTES, size - 8):
        raise ValueError(f"{where}: header length {n} exceeds the file ({size} bytes) or the "
                         f"{MAX_HEADER_BYTES}-byte limit")
    raw = f.read(n)
    if len(raw) != n:
        raise ValueError(f"{where}: the file ends inside the header")
    data_size = size - 8 - n
    entries, metadata = _parse_header(raw, data_size, where)
    tensors, pos = {}, 0
    for begin, end, name, tag, shape in entries:
        if begin != pos:
            f.seek(8 + n + begin)
        buf = f.read(end - begin)
        if len(buf) != end - begin:
            raise ValueError(f"{where}: the file ends inside tensor {name!r}")
        pos = end
        tensors[name] = _decode(buf, tag, shape)
    return tensors, metadata


def loads(data, where="safetensors"):
    """(tensors, metadata) from the bytes of a safetensors file."""
    import io
    return read(io.BytesIO(data), len(data), where)


def load_file(path, with_metadata=False):
    """{name: numpy array} read from `path` (validated first; see the module
    docstring). With with_metadata=True returns (tensors, metadata)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        tensors, metadata = read(f, size, path)
    return (tensors, metadata) if with_metadata else tensors


# ---------------------------------------------------------------------------
# Model weights with stable names.

def _layer_tensors(layer, prefix, out):
    from . import layers as _layers
    if isinstance(layer, _layers.Residual):
        for j, sub in enumerate(layer.layers):
            _layer_tensors(sub, f"{prefix}layers.{j}.", out)
        return
    for p in layer.parameters():
        out.append((prefix + p.name, p.value))
    buffers = layer.buffers()
    # BatchNorm's buffers under PyTorch's names; any other layer's by position.
    names = (["running_mean", "running_var", "num_batches_tracked"] if isinstance(layer, _layers.BatchNorm)
             else [f"buffer{i}" for i in range(len(buffers))])
    for bname, b in zip(names, buffers):
        out.append((prefix + bname, b))


def model_tensors(model):
    """[(stable name, writable view)] of every parameter and buffer of a model:
    ``layers.{i}.{kernel|bias|gamma|beta|alpha|beta}``,
    ``layers.{i}.{running_mean|running_var|num_batches_tracked}`` for BatchNorm,
    ``layers.{i}.layers.{j}.…`` inside a Residual block."""
    out = []
    for i, layer in enumerate(model.layers):
        _layer_tensors(layer, f"layers.{i}.", out)
    return out


def save_weights(model, path):
    if not model.built:
        raise RuntimeError("build or train the model before saving its weights")
    tensors = {name: np.array(view, dtype=np.float32) for name, view in model_tensors(model)}
    from ._version import __version__
    save_file(tensors, path, metadata={"format": "nerve-weights", "nerve_version": __version__})


def load_weights(model, path):
    if not model.built:
        raise RuntimeError("build the model (input_dim=...) before loading weights into it")
    tensors = load_file(path)
    targets = model_tensors(model)
    expected = {name for name, _ in targets}
    missing = sorted(expected - set(tensors))
    extra = sorted(set(tensors) - expected)
    if missing or extra:
        raise ValueError(f"{os.fspath(path)}: the weights do not match the model: missing "
                         f"{missing or 'none'}, unexpected {extra or 'none'}")
    checked = []
    for name, view in targets:
        arr = tensors[name]
        if arr.shape != view.shape:
            raise ValueError(f"{os.fspath(path)}: tensor {name!r} has shape {arr.shape}, the model "
                             f"needs {view.shape}")
        if arr.dtype.kind not in "fiub":
            raise ValueError(f"{os.fspath(path)}: tensor {name!r} has dtype {arr.dtype}, expected a number")
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{os.fspath(path)}: tensor {name!r} contains NaN or Inf")
        checked.append((view, arr))
    for view, arr in checked:  # nothing changes unless every tensor is valid
        view[...] = arr
    for p in model.parameters():  # pruned weights stay pruned
        if p._arena.has_mask:
            p._arena.apply_mask()
            break
