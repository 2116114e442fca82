"""Shared driver of the atheris fuzz targets (extra `fuzz`): each target
feeds arbitrary bytes to one reader and accepts only ValueError (what the
readers document for bad input). Anything else (another exception type, a
crash, a hang) is a finding: add the input to tests/ as a regression test."""
import os
import sys
import tempfile

import atheris


def run(target, suffix):
    tmpdir = tempfile.mkdtemp(prefix="nerve-fuzz-")
    path = os.path.join(tmpdir, "input" + suffix)

    def one(data):
        with open(path, "wb") as f:
            f.write(data)
        try:
            target(path, data)
        except ValueError:
            pass  # the documented error for bad input

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
