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


# The instruction sets that decide float32 and bfloat16 speed on a CPU, as /proc/cpuinfo names them
ISA = {"AVX-512": ("avx512f",), "AVX512-BF16": ("avx512_bf16",), "AMX": ("amx_bf16", "amx_tile")}


def machine(load_start) -> dict:
    """Cores, processor and its instruction sets (ISA), Python, platform and the load average at the
    start and now, for a report. The matmul rates are the benchmark's own (it measures them)."""
    flags = cpu_flags()
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu_name(),
        "isa": {name: all(f in flags for f in need) for name, need in ISA.items()} if flags else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
    }


def describe(m: dict, matmul: dict | None = None) -> str:
    """One line that names the machine a figure was measured on: what machine() returned, the matmul
    rates (benchmarks.workers.matmul) when given, and the load."""
    isa = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in (m.get("isa") or {}).items()) or "ISA unknown"
    rates = (
        f"; matmul float32 {matmul['float32_gflops']:.0f}, bfloat16 {matmul['bfloat16_gflops']:.0f} GFLOP/s"
        if matmul and "bfloat16_gflops" in matmul
        else f"; matmul float32 {matmul['float32_gflops']:.0f} GFLOP/s"
        if matmul
        else ""
    )
    start, end = m["load_average_start"][0], m["load_average_end"][0]
    load = f"load average {start:.2f} at the start, {end:.2f} at the end"
    return f"machine: {m['cpu']}, {m['cpus']} cores ({isa}){rates}; {load}"


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where there is none."""
    try:
        return set(next(line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")))
    except (OSError, StopIteration):
        return set()


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()
