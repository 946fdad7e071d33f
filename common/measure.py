"""What `common.profile` and `benchmarks.throughput` share: one measurement in a fresh interpreter,
and the description of the machine it ran on. No framework is imported here."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_worker(command: list[str], cfg: dict, timeout: float, env: dict | None = None, args=()) -> dict:
    """Run `command config.json result.json *args` in a fresh interpreter (command: `[python, "-m",
    module]`): `cfg` goes into config.json, the worker writes result.json; a crash or a timeout
    becomes a 'failed' row with the last lines it printed."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, result_path = Path(tmp, "config.json"), Path(tmp, "result.json")
        cfg_path.write_text(json.dumps(cfg))
        load = os.getloadavg()[0]
        try:
            proc = subprocess.run(
                [*command, str(cfg_path), str(result_path), *args],
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            tail, code = (proc.stderr or proc.stdout).strip().splitlines()[-3:], proc.returncode
        except subprocess.TimeoutExpired:
            tail, code = [f"timed out after {timeout:.0f} s (--timeout)"], "timeout"
        if code == 0 and result_path.is_file():
            result = json.loads(result_path.read_text())
        else:
            result = {
                "framework": cfg["framework"],
                "size": cfg.get("size"),
                "status": "failed",
                "message": f"exit {code}: " + " | ".join(tail),
            }
    result.update(load_before=load, load_after=os.getloadavg()[0])
    return result


def machine(load_start) -> dict:
    """Cores, processor, Python, platform and the load average at the start and now, for a report."""
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
    }


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()
