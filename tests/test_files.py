"""Model files: an interrupted save leaves nothing behind for long, the
rename reaches the disk, and every malformed file raises ModelFileError (a
ValueError) with its cause chained (docs/reliability.md, "Files")."""
import io
import lzma
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
import zlib

import numpy as np
import pytest

import nerve as nv


def small_model():
    nv.manual_seed(0)
    m = nv.Sequential([nv.layers.Dense(8, activation="relu"), nv.layers.Dense(2)], input_dim=4)
    m.compile(optimizer="adam", loss="cross_entropy")
    m.train_step(np.ones((3, 4), np.float32), np.array([0, 1, 0]))
    return m


def test_temp_file_of_a_killed_save_is_removed_by_the_next_save(tmp_path):
    # A process SIGKILLed inside save (here: by itself, mid-write) leaves its
    # .nerve-<pid>-*.tmp behind; before, 20 of 30 kills left ~45 MB each, forever.
    script = textwrap.dedent(f"""
        import os, signal, numpy as np, nerve as nv
        m = nv.Sequential([nv.layers.Dense(8), nv.layers.Dense(2)], input_dim=4)
        real = np.savez
        def dying_savez(f, **arrays):
            f.write(b"PK partial")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        np.savez = dying_savez
        m.save({str(tmp_path / "m.nerve")!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    left = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".nerve-")
    m = small_model()
    m.save(tmp_path / "m.nerve")
    assert sorted(os.listdir(tmp_path)) == ["m.nerve"]
    nv.load_model(tmp_path / "m.nerve")


def test_temp_file_of_a_live_writer_is_kept(tmp_path):
    live = tmp_path / f".nerve-{os.getppid()}-abc.tmp"  # our parent: alive
    live.write_bytes(b"in progress")
    small_model().save(tmp_path / "m.nerve")
    assert live.exists()


def test_directory_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd")
                       else None))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", None))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    small_model().save(tmp_path / "m.nerve")
    kinds = [k for k, _ in events]
    assert kinds == ["fsync", "replace", "fsync"]  # the data, the rename, then the folder
    if events[2][1] is not None:
        assert events[2][1] is True and events[0][1] is False


# -- one exception type from load_model ----------------------------------------------
def _zip_with(members, compression=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _good_members():
    buf = io.BytesIO()
    small_model().save(buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        return {n: z.read(n) for n in z.namelist()}


def _corrupt_deflate():
    data = bytearray(_zip_with(_good_members(), zipfile.ZIP_DEFLATED))
    # Flip bytes inside the first member's compressed stream (after its local header).
    start = 30 + len("config.npy") + 20
    for i in range(start, start + 40):
        data[i] ^= 0xFF
    return bytes(data)


def _lzma_member():
    return _zip_with({"config.npy": b"\x00" * 64}, zipfile.ZIP_LZMA)[:-40]


def _unsupported_compression():
    data = bytearray(_zip_with(_good_members()))
    # Compression method 99 (AES) in every header: zipfile raises NotImplementedError.
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        i = 0
        while (i := data.find(sig, i)) >= 0:
            off = i + (8 if sig == b"PK\x03\x04" else 10)
            data[off: off + 2] = (99).to_bytes(2, "little")
            i += 4
    return bytes(data)


@pytest.mark.parametrize("make, cause", [
    (lambda: b"", None),
    (lambda: b"not a zip at all", None),
    (lambda: _zip_with(_good_members())[:200], None),
    (_corrupt_deflate, (zlib.error, zipfile.BadZipFile, ValueError)),
    (_lzma_member, (lzma.LZMAError, EOFError, zipfile.BadZipFile, ValueError)),
    (_unsupported_compression, NotImplementedError),
    (lambda: _zip_with({"config.npy": b"\x93NUMPY\x01\x00" + b"\xff" * 10}), None),
])
def test_every_malformed_file_is_a_model_file_error(tmp_path, make, cause):
    path = tmp_path / "bad.nerve"
    path.write_bytes(make())
    with pytest.raises(nv.ModelFileError) as info:
        nv.load_model(path)
    assert isinstance(info.value, ValueError)
    if cause is not None:
        chain, e = [], info.value
        while e is not None:
            chain.append(e)
            e = e.__cause__
        assert any(isinstance(c, cause) for c in chain[1:]), chain


def test_directory_instead_of_a_file_is_a_model_file_error(tmp_path):
    with pytest.raises(nv.ModelFileError) as info:
        nv.load_model(tmp_path)
    assert isinstance(info.value.__cause__, OSError)


# -- findings of the fuzz targets (fuzz/), kept as regression tests -----------------
def test_corrupt_npz_dataset_is_a_value_error(tmp_path):
    # fuzz_table: a bad CRC in y.npy escaped load_file as zipfile.BadZipFile.
    buf = io.BytesIO()
    np.savez(buf, x=np.arange(6, dtype=np.float32).reshape(3, 2), y=np.array([0, 1, 0]))
    data = bytearray(buf.getvalue())
    i = data.rfind(b"\x93NUMPY")  # inside the last member (y.npy): its CRC no longer matches
    data[i + 60] ^= 0x01
    path = tmp_path / "d.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError) as info:
        nv.datasets.load_file(path)
    assert info.value.__cause__ is not None or "npz" in str(info.value).lower()


def test_idx_header_whose_size_product_wraps_is_refused(tmp_path):
    # 4 dimensions of 65536: np.prod wrapped the element count to 0 in int64.
    path = tmp_path / "x.idx"
    path.write_bytes(bytes([0, 0, 8, 4]) + (65536).to_bytes(4, "big") * 4)
    with pytest.raises(ValueError, match="header says"):
        nv.datasets.read_idx(path)
