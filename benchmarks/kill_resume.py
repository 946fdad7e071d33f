"""SIGKILL a 2-epoch run at random moments, then resume it: --resume must always work, and the
finished run's model.safetensors must equal an uninterrupted run's, tensor for tensor, bit for bit.

    python -m benchmarks.kill_resume --tries 10                      # the three frameworks
    python -m benchmarks.kill_resume --tries 2 --frameworks torch    # what tests/test_run_safety.py runs

Half the kills fall at a uniform moment of the whole run (start-up included); the others in the
middle of a checkpoint's writes: 0-50 ms after its temp folder, or the weights' temp file, appears
(watched from outside, every millisecond; no hook in the code). What each kill left behind (temp
files, the checkpoint pointed to, the epochs metrics.json records) is recorded with it. Small
model: VGG-11/8 at 32 px, 2 epochs of --max-steps steps, the bundled sample. Writes a JSON report
(--report).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from common import FRAMEWORKS
from common.cli import main_guard
from common.errors import RunError
from common.runfolder import LOCK, MANIFEST
from tests.frameworks import SMALL_RUN

ROOT = Path(__file__).resolve().parents[1]
MODES = ("uniform", "checkpoint", "uniform", "weights")  # where the kills fall, in turn


def flags(steps: int) -> list[str]:
    # the tests' small run (tests/test_run_safety.py runs this benchmark); dropout on: its RNG must resume too
    return [*SMALL_RUN, "--max-steps", str(steps), "--epochs", "2", "--lr", "0.01"]


def start(fw: str, out: Path, argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(
        [sys.executable, "-m", f"vgg_{fw}.train", *argv, "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )


def finish(p: subprocess.Popen, what: str) -> str:
    out, err = p.communicate(timeout=900)
    if p.returncode != 0 or "Traceback" in err:
        raise AssertionError(f"{what}: exit code {p.returncode}\n{err[-3000:]}")
    return out


def pointed(out: Path) -> int:
    """The epoch checkpoint.json points to (0 when there is none yet)."""
    try:
        return json.loads((out / "checkpoint.json").read_text())["epoch"]
    except (OSError, ValueError):
        return 0


def left_behind(out: Path) -> dict:
    """What a killed run left: the checkpoint pointed to, the epochs metrics.json records, temp files."""
    state = {
        "pointer": None,
        "metrics_epochs": None,
        "temp": sorted(p.name for p in out.glob(".*") if p.name not in (LOCK, MANIFEST)) if out.is_dir() else [],
    }
    try:
        state["pointer"] = json.loads((out / "checkpoint.json").read_text())["epoch"]
    except FileNotFoundError:
        pass
    try:
        state["metrics_epochs"] = len(json.loads((out / "metrics.json").read_text())["epochs"])
    except FileNotFoundError:
        pass
    state["during_checkpoint_write"] = bool(state["temp"]) or (
        state["metrics_epochs"] is not None and state["metrics_epochs"] != (state["pointer"] or 0)
    )
    return state


def differing(a: Path, b: Path) -> list[str]:
    ta, tb = load_file(str(a)), load_file(str(b))
    if ta.keys() != tb.keys():
        return ["(different tensor names)"]
    return [k for k in ta if ta[k].dtype != tb[k].dtype or not np.array_equal(ta[k], tb[k])]


def trial(fw: str, folder: Path, argv: list[str], reference: Path, seconds: float, mode: str, rng) -> dict:
    """One run killed with SIGKILL, then resumed (or started again when no checkpoint was written)."""
    out = folder / "run"
    shutil.rmtree(out, ignore_errors=True)
    p = start(fw, out, argv)
    t0 = time.perf_counter()
    if mode == "uniform":
        delay = float(rng.uniform(0, seconds))
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            pass
        at = f"{delay:.2f} s after start"
    else:  # in epoch k's checkpoint (its temp folder) or weights file (its temp file), as soon as it shows
        k, delay = int(rng.integers(1, 3)), float(rng.uniform(0, 0.05))
        before, pattern = (k - 1, ".checkpoint-*") if mode == "checkpoint" else (k, ".model.safetensors.*")
        while p.poll() is None and not (pointed(out) == before and any(out.glob(pattern))):
            time.sleep(0.001)
        time.sleep(delay)
        at = f"{delay * 1000:.0f} ms into epoch {k}'s {'checkpoint folder' if mode == 'checkpoint' else 'weights file'}"
    killed = p.poll() is None
    if killed:
        p.send_signal(signal.SIGKILL)
    p.communicate()
    row = {
        "mode": mode,
        "kill": at,
        "seconds": round(time.perf_counter() - t0, 2),
        "killed": killed,
        **left_behind(out),
    }
    resume = ["--resume"] if row["pointer"] is not None else []
    finish(start(fw, out, argv + resume), f"{fw}: {'--resume' if resume else 'a fresh start'} after a kill {at}")
    row["resumed"] = bool(resume)
    row["differing_tensors"] = differing(reference, out / "model.safetensors")
    m = json.loads((out / "metrics.json").read_text())
    row["ok"] = (
        not row["differing_tensors"]
        and m["status"] == "finished"
        and len(m["epochs"]) == 2
        and not [p.name for p in out.glob(".*") if p.name != MANIFEST]
    )
    return row


def run(frameworks, tries: int, steps: int, seed: int = 0, folder: Path | None = None, log=print) -> dict:
    folder = Path(folder or tempfile.mkdtemp(prefix="kill-resume-"))
    rng = np.random.default_rng(seed)
    argv = flags(steps)
    report = {"flags": argv, "tries": tries, "frameworks": {}}
    for fw in frameworks:
        ref = folder / fw / "reference"
        t = time.perf_counter()
        finish(start(fw, ref, argv), f"{fw}: the uninterrupted run")
        seconds = time.perf_counter() - t
        rows = []
        for i in range(tries):
            row = trial(fw, folder / fw, argv, ref / "model.safetensors", seconds, MODES[i % len(MODES)], rng)
            rows.append(row)
            log(
                f"{fw} try {i + 1}/{tries}: {'killed' if row['killed'] else 'ended before the kill'} {row['kill']} "
                f"(pointer {row['pointer']}, metrics epochs {row['metrics_epochs']}, temp {row['temp']}); "
                f"{'resumed' if row['resumed'] else 'started again'}: "
                f"{'same weights' if row['ok'] else 'FAILED ' + str(row['differing_tensors'])}"
            )
        report["frameworks"][fw] = {
            "uninterrupted_seconds": round(seconds, 1),
            "tries": rows,
            "failures": sum(not r["ok"] for r in rows),
            "during_checkpoint_write": sum(r["during_checkpoint_write"] for r in rows),
        }
    return report


def main(argv=None):
    with main_guard():
        _main(argv)


def _main(argv):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--tries", type=int, default=10, help="kills per framework (default 10)")
    p.add_argument("--steps", type=int, default=6, help="--max-steps of each epoch (default 6)")
    p.add_argument("--seed", type=int, default=0, help="for the kill moments")
    p.add_argument("--report", default=str(ROOT / "benchmarks" / "results" / "kill_resume.json"))
    args = p.parse_args(argv)
    report = run(args.frameworks.split(","), args.tries, args.steps, args.seed)
    report["date"] = time.strftime("%Y-%m-%d")
    report["command"] = "python -m benchmarks.kill_resume " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.report).write_text(json.dumps(report, indent=1) + "\n")
    failures = sum(f["failures"] for f in report["frameworks"].values())
    for fw, f in report["frameworks"].items():
        print(
            f"{fw}: {len(f['tries'])} kills, {f['during_checkpoint_write']} during a checkpoint write, "
            f"{f['failures']} failures"
        )
    print(f"wrote {args.report}")
    if failures:
        raise RunError(f"{failures} resumed run(s) did not end with the uninterrupted run's weights", code=1)


if __name__ == "__main__":
    main()
