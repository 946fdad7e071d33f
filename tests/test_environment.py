"""MXNet 1.9.1 on today's NumPy: `vgg_gluon` restores what MXNet needs of NumPy's removed names
(docs/environment.md), adds only what is missing and changes nothing NumPy has.

Each check runs in a fresh interpreter: the shim acts when `vgg_gluon` is first imported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_numpy_is_left_as_it_was():
    """Every name NumPy has keeps its object (NumPy 2's np.bool is np.bool_: the old `np.bool = bool`
    broke numpy.ma, whose masks then became Python bools), and numpy.ma still works."""
    out = python(
        "import warnings; warnings.simplefilter('ignore')\n"
        "import numpy as np\n"
        "before = {n: getattr(np, n) for n in dir(np)}\n"
        "import vgg_gluon\n"
        "changed = [n for n, v in before.items() if getattr(np, n) is not v]\n"
        "import numpy.ma as ma\n"
        "print(changed, int(ma.masked_array([1, 2, 4], mask=[0, 1, 0]).sum()), np.__version__)\n"
    )
    changed, total, version = out.rsplit(" ", 2)
    assert changed == "[]" and total == "5", out


def test_every_mxnet_module_imports():
    """After vgg_gluon, all of MXNet's Python modules import: the removed NumPy names it reads at
    import time (constants, aliases it copies or looks up) are there."""
    out = python(
        "import importlib, pkgutil, warnings; warnings.simplefilter('ignore')\n"
        "import vgg_gluon, mxnet\n"
        "bad = []\n"
        "for m in pkgutil.walk_packages(mxnet.__path__, 'mxnet.', onerror=bad.append):\n"
        "    if m.name.rsplit('.', 1)[-1] in ('setup', 'libmxnet'):  # a build script, the C library\n"
        "        continue\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except Exception as e:\n"
        "        bad.append(f'{m.name}: {type(e).__name__}: {e}')\n"
        "print(len(bad), bad)\n"
    )
    assert out.startswith("0 "), out
