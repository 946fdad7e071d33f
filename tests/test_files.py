"""Every file the project writes goes through common.files: whole or not at all, with the mode
that a plain open() gives (0o666 less the umask)."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from common.files import atomic_path, write_atomic

ROOT = Path(__file__).resolve().parents[1]

# Run under a given umask in a fresh process (the umask is process-wide): the exported weights, the
# metrics.json writer and a download (from a file:// URL, no network), each through the project's own code.
WRITERS = r"""
import hashlib, json, os, sys
from pathlib import Path
os.umask(int(sys.argv[2], 8))
out = Path(sys.argv[1])
import numpy as np
from common.arch import make_spec
from common.data import download
from common.files import write_json
from common.weights import expected_canonical, save_weights, spec_metadata
spec = make_spec("vgg11", width_ratio=8, scale_classifier=True, image_size=32)
save_weights(out / "model.safetensors", {k: np.zeros(s, np.float32) for k, s in expected_canonical(spec).items()},
             spec_metadata(spec))
write_json(out / "metrics.json", {"status": "finished"})
src = out / "mirror" / "t10k-labels-idx1-ubyte.gz"
download(out / "data", mirrors=[src.parent.as_uri()], checksums={src.name: hashlib.md5(src.read_bytes()).hexdigest()},
         progress=False, retries=1)
print(json.dumps({p: os.stat(out / p).st_mode & 0o777 for p in
                  ("model.safetensors", "metrics.json", "data/t10k-labels-idx1-ubyte.gz")}))
"""


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077], ids=oct)
def test_written_files_get_the_umask_mode(tmp_path, umask):
    (tmp_path / "mirror").mkdir()
    name = "t10k-labels-idx1-ubyte.gz"
    (tmp_path / "mirror" / name).write_bytes((ROOT / "common" / "data" / name).read_bytes())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-c", WRITERS, str(tmp_path), oct(umask)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    modes = json.loads(r.stdout.splitlines()[-1])
    assert modes == {k: 0o666 & ~umask for k in modes}, {k: oct(v) for k, v in modes.items()}
    assert sorted(p.name for p in tmp_path.rglob("*") if p.name.startswith(".")) == []  # no temp file left


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "f.json"
    write_atomic(path, "old")
    for exc in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc):
            with atomic_path(path) as tmp:
                tmp.write_text("half of the n")
                raise exc
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]


def test_atomic_path_replaces_what_the_writer_made(tmp_path):
    """A writer that replaces the temp file (safetensors creates its own, 0600) still ends with the mode."""
    path = tmp_path / "w.bin"
    with atomic_path(path) as tmp:
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"new")
        os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    assert path.read_bytes() == b"new" and stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask
