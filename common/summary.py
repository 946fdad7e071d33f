"""`python -m common.summary`: the three frameworks' shape summaries, side by side.

Each framework runs in its own process (`python -m vgg_X.model`), so this module,
like all of `common`, imports no framework. Flags are passed through unchanged.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from . import PACKAGES as FRAMEWORKS
from .cli import main_guard
from .errors import RunError


def run_model_cli(package: str, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"{package}.model", *argv], capture_output=True, text=True)


def side_by_side(columns: list[list[str]], gap: int = 3) -> str:
    widths = [max(map(len, col)) for col in columns]
    rows = max(map(len, columns))
    out = []
    for i in range(rows):
        cells = [(col[i] if i < len(col) else "").ljust(w) for col, w in zip(columns, widths)]
        out.append((" " * gap).join(cells).rstrip())
    return "\n".join(out)


def main(argv=None):
    with main_guard():
        _main(list(sys.argv[1:] if argv is None else argv))


def _main(argv):
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip() + "\n")
        print(run_model_cli("vgg_torch", ["--help"]).stdout.replace("vgg_torch.model", "common.summary"))
        return
    with ThreadPoolExecutor(len(FRAMEWORKS)) as pool:
        results = list(pool.map(lambda f: run_model_cli(f, argv), FRAMEWORKS))
    for f, r in zip(FRAMEWORKS, results):
        if r.returncode != 0:
            last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"
            raise RunError(f"{f}: {last.removeprefix('error: ')}", code=r.returncode)
    columns = [r.stdout.rstrip().splitlines() for r in results]
    # the counts line is long; print it once per framework under the table
    counts = [col.pop() for col in columns]
    print(side_by_side(columns))
    print()
    for f, c in zip(FRAMEWORKS, counts):
        print(f"{f:10s} {c}")
    same = len(set(counts)) == 1
    print("parameter counts agree across the three frameworks" if same else "PARAMETER COUNTS DIFFER")
    if not same:
        raise RunError("the parameter counts differ between the frameworks", code=1)


if __name__ == "__main__":
    main()
