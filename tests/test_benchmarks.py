"""The throughput benchmark runs on a tiny configuration and writes well-formed JSON.

No timing is asserted (speed goals live in the benchmark's own report); what is checked is that
every framework and peer was measured, that the peers were built at the same width as the
project's models (their parameter counts against common.arch's arithmetic), and that the
ratios in the report follow from the measurements in it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.arch import expected_counts, make_spec

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "fashion-mnist"
DATA = SHARED if SHARED.is_dir() else ROOT / "common" / "data"
FRAMEWORKS = ["vgg_torch", "vgg_gluon", "vgg_flax", "torchvision", "gluon_zoo"]
TINY = [
    "--sizes",
    "32",
    "--width-ratio",
    "16",
    "--steps",
    "2",
    "--warmup",
    "1",
    "--batch-size",
    "32",
    "--matmul-sizes",
    "256",
    "--matmul-repeats",
    "1",
    "--data-dir",
    str(DATA),
]


def bench(*argv, out):
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.throughput", *argv, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,  # five workers and three train scripts; a shared CI machine may be slow
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out, calls, wrapper = tmp / "throughput.json", tmp / "calls.txt", tmp / "other-python"
    # --extra's interpreter: this one behind a script that writes down each call it gets
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    proc = bench(*TINY, "--extra", f"flax_other={wrapper}:flax", out=out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout, calls.read_text(), str(wrapper)


def test_every_framework_and_peer_is_measured(report):
    result, stdout = report[:2]
    assert result["benchmark"] == "throughput"
    assert {"cpus", "load_average_start", "load_average_end"} <= set(result["machine"])
    assert result["config"]["sizes"] == [32] and result["config"]["frameworks"] == FRAMEWORKS
    assert result["matmul"]["float32_gflops"] > 0 and result["matmul"]["bfloat16_gflops"] > 0
    isa = result["machine"]["isa"]  # None where /proc/cpuinfo has no flags (not Linux)
    assert isa is None or set(isa) == {"AVX-512", "AVX512-BF16", "AMX"}
    assert result["machine"]["cpu"] in stdout and "AVX512-BF16" in stdout and "bfloat16" in stdout
    rows = {r["framework"]: r for r in result["results"]}
    assert sorted(rows) == sorted(FRAMEWORKS + ["flax_other"])
    for fw, r in rows.items():
        assert r["status"] == "ok", (fw, r.get("message"))
        assert r["size"] == 32 and r["peak_rss_mb"] > 0
        for phase in ("train", "infer"):
            for mode in ("compute", "end_to_end"):
                m = r[phase][mode]
                assert m["steps"] == 2 and m["examples_per_s"] > 0 and m["first_step_s"] > 0, (fw, phase, mode)
                assert m["examples_per_s"] == pytest.approx(32 * m["steps"] / m["seconds"])
        assert fw in stdout


def test_extra_runs_a_framework_under_another_interpreter(report):
    """--extra NAME=PYTHON:FRAMEWORK: the worker was started by that interpreter (its calls were
    written down), with that framework; the row is named NAME and is not one of the three."""
    result, stdout, calls, wrapper = report
    row = next(r for r in result["results"] if r["framework"] == "flax_other")
    assert row["measures"] == "vgg_flax" and row["python"] == wrapper
    assert row["versions"] == next(r for r in result["results"] if r["framework"] == "vgg_flax")["versions"]
    # the one size, once, and its train script's cross-check; the matmul and the other rows ran elsewhere
    call, script = calls.splitlines()
    assert "benchmarks.workers" in call and call.endswith(" vgg_flax")
    assert script.startswith("-m vgg_flax.train ") and row["cross_check"]["status"] == "ok"
    assert result["config"]["extra"] == {"flax_other": {"framework": "vgg_flax", "python": wrapper}}
    assert "flax_other: flax " in stdout


@pytest.mark.parametrize(
    "extra,message",
    [
        ("flax_old=/no/such/python:flax", "no interpreter at /no/such/python"),
        ("flax_old=" + sys.executable + ":keras", "unknown framework 'keras'"),
        ("vgg_torch=" + sys.executable + ":flax", "the name 'vgg_torch' is taken"),
        ("flax_old", "write NAME=PYTHON:FRAMEWORK"),
    ],
)
def test_extra_mistakes_fail_with_a_message(tmp_path, extra, message):
    proc = bench(*TINY, "--extra", extra, out=tmp_path / "x.json")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.json").exists()


def test_the_train_scripts_are_run_beside_the_benchmark(report):
    """The cross-check: each of the three train scripts ran the same configuration for as many
    steps as the benchmark's end-to-end training timed (plus the first, which it leaves out), and
    its own examples/s stand beside the benchmark's, their ratio in the JSON and the output."""
    result, stdout = report[:2]
    rows = {r["framework"]: r for r in result["results"]}
    for fw in ("vgg_torch", "vgg_gluon", "vgg_flax"):
        c, e2e = rows[fw]["cross_check"], rows[fw]["train"]["end_to_end"]
        assert c["status"] == "ok" and c["steps"] == e2e["steps"] + 1, (fw, c)
        assert (
            f"-m {fw}.train " in c["command"]
            and "--precision=float32" in c["command"]
            and "--resize=32" in c["command"]
        )
        assert c["script_vs_benchmark"] == pytest.approx(c["examples_per_s"] / e2e["examples_per_s"])
        assert c["agrees"] == (abs(c["script_vs_benchmark"] - 1) <= 0.2)
        assert result["cross_check"]["values"][f"{fw}@32"] == pytest.approx(c["script_vs_benchmark"])
    assert "cross_check" not in rows["torchvision"] and "cross_check" not in rows["gluon_zoo"]  # no train script
    assert "its train script" in stdout and "cross-check:" in stdout
    assert result["cross_check"]["agrees"] == (not result["cross_check"]["apart"])


def test_peers_compute_the_same_network(report):
    """torchvision's VGG is patched (1-channel first conv, real flatten size) and the Gluon zoo's
    is built from (layers, filters): both must hold exactly the parameters of VGG-11/16 at 32 px."""
    expected = expected_counts(make_spec("vgg11", image_size=32, width_ratio=16))[0]
    for r in report[0]["results"]:
        assert r["parameters"] == expected, r["framework"]


def test_ratios_and_goals_follow_from_the_measurements(report):
    result = report[0]
    rows = {r["framework"]: r for r in result["results"]}
    ours = ["vgg_torch", "vgg_gluon", "vgg_flax"]
    best = max(rows[f]["train"]["compute"]["examples_per_s"] for f in ours)
    mm = result["matmul"]["precision_gflops"]
    for q in result["ratios"]:
        r = rows[q["framework"]]
        train, e2e = r["train"]["compute"]["examples_per_s"], r["train"]["end_to_end"]["examples_per_s"]
        assert q["train_vs_fastest"] == pytest.approx(train / best)
        assert q["train_end_to_end_vs_compute"] == pytest.approx(e2e / train)  # one sample: --repeat 1
        assert q["train_vs_matmul"] == pytest.approx(train * 3 * r["forward_flops"] / 1e9 / mm)
    assert max(q["train_vs_fastest"] for q in result["ratios"] if q["framework"] in ours) == pytest.approx(1.0)
    goals = result["goals"]
    assert len(goals) == 4
    assert goals["at 224 px, training >= 50% of the matmul rate"]["holds"] is None  # 224 was not measured
    for g in goals.values():
        assert g["holds"] in (True, False, None) and isinstance(g["values"], dict)


def test_gpu_without_a_gpu_fails_with_a_message(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: --device gpu would run")
    proc = bench(*TINY, "--device", "gpu", out=tmp_path / "gpu.json")
    assert proc.returncode == 2
    assert "error: " in proc.stderr and "no GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "gpu.json").exists()


# One benchmark worker per precision, in a process of its own (MXNet's AMP patches its operators for
# good); a forward hook on the model records the dtype of the logits that reach the loss, inside the
# benchmark's own train step (compute only, then end to end).
PRECISION_PROBE = """
import json, sys
import numpy as np
from benchmarks import workers
framework, out = sys.argv[1], {}
for precision, workarounds in (("float32", True), ("bfloat16", True), ("bfloat16", False)):
    cfg = dict(arch="vgg11", width_ratio=16, batch_size=8, device="cpu", precision=precision,
               torch_compile=False, torch_memory_format="channels_last", gluon_hybridize="static",
               flax_donate=False, cpu_workarounds=workarounds)
    seen = out[precision + ("" if workarounds else " --no-cpu-workarounds")] = []
    r = workers.RUNNERS[framework][0](cfg, 32)
    if framework == "vgg_torch":
        r.b.net.register_forward_hook(lambda m, i, o: seen.append(str(o.dtype)))
    elif framework == "vgg_gluon":
        r.b.net.register_forward_hook(lambda b, i, o: seen.append(str(o.dtype)))
    else:
        cls = type(r.b.model)
        call = cls.__call__
        def traced(self, x, call=call):
            y = call(self, x)
            seen.append(str(y.dtype))
            return y
        cls.__call__ = traced
    x = np.random.default_rng(0).random((8, 1, 32, 32), dtype=np.float32)
    y = np.arange(8) % 10
    r.mode(True)
    r.wait(r.train_step(*r.to_device(x, y)))
    r.wait(r.train_step_host(x, y))
    if framework == "vgg_flax":
        cls.__call__ = call
print(json.dumps(out))
"""


@pytest.mark.parametrize("framework", ["vgg_torch", "vgg_gluon", "vgg_flax"])
def test_the_benchmarked_step_runs_in_the_requested_precision(framework):
    """--precision bfloat16 must reach the step the benchmark times: the logits before the loss are
    bfloat16 there (float32 in a float32 run), as in the train script. A worker that wraps the step
    in a precision context of its own that the step then switches off would measure float32.
    Flax on a CPU computes its bfloat16 layers in float32 (vgg_flax.xla_cpu: XLA:CPU has nothing
    faster in bfloat16) unless --no-cpu-workarounds."""
    proc = subprocess.run(
        [sys.executable, "-c", PRECISION_PROBE, framework], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    low = "float32" if framework == "vgg_flax" else "bfloat16"
    for run, dtype in (("float32", "float32"), ("bfloat16", low), ("bfloat16 --no-cpu-workarounds", "bfloat16")):
        assert len(seen[run]) >= 1 and all(dtype in d for d in seen[run]), (run, seen)


def test_train_scripts_clock_starts_when_the_first_step_is_done():
    """The train scripts' examples/s (what the cross-check reads) leave the first step out: the
    clock starts when it is done. A synchronous step (PyTorch on a CPU returns when the step is
    over) must not have finished the second step too by then, or examples/s would count a step it
    did not time: 1.5x too high over four steps. The truth is the steps' own durations."""
    import time

    import numpy as np

    from common.data import Loader
    from common.training import train_epoch

    class Synchronous:  # a Backend whose step is over when train_step returns
        def __init__(self):
            self.spans = []

        def start_epoch(self, epoch):
            pass

        def train_step(self, x, y):
            t = time.perf_counter()
            time.sleep(0.05)
            self.spans.append(time.perf_counter() - t)
            return 0.5, 1

        def fetch(self, out):
            return out

    backend, batch = Synchronous(), 8
    loader = Loader(np.zeros((64, 28, 28), np.uint8), np.zeros(64, np.int64), batch_size=batch, prefetch=0)
    metrics = {"step_loss": [], "curve": [], "config": {"epochs": 1}}
    speed = train_epoch(backend, loader, 0, 4, False, metrics)[3]
    assert len(backend.spans) == 4
    truth = 3 * batch / sum(backend.spans[1:])  # steps 2-4, the first left out
    assert speed == pytest.approx(truth, rel=0.1), (speed, truth)


def ratios_cli(*argv):
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.ratios", *map(str, argv)], cwd=ROOT, capture_output=True, text=True
    )


def test_ratios_divide_one_run_by_another(report, tmp_path):
    """benchmarks.ratios on a real result and a copy with its figures scaled by known factors: the
    ratios it prints and writes are those factors, row by row; other machines or models are refused."""
    first = report[0]
    second = json.loads(json.dumps(first))
    second["config"]["precision"] = "bfloat16"
    factors = {"train.compute": 2.0, "train.end_to_end": 1.5, "infer.compute": 3.0, "script": 1.25}
    for row in second["results"]:
        for key in ("train.compute", "train.end_to_end", "infer.compute"):
            phase, mode = key.split(".")
            row[phase][mode]["examples_per_s"] *= factors[key]
        if "cross_check" in row:
            row["cross_check"]["examples_per_s"] *= factors["script"]
    a, b = tmp_path / "float32.json", tmp_path / "bfloat16.json"
    a.write_text(json.dumps(first))
    b.write_text(json.dumps(second))
    proc = ratios_cli(a, b, "--out", tmp_path / "r.json", "--plot", tmp_path / "r.png")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "r.json").read_text())["ratios"]
    assert {(r["framework"], r["size"]) for r in rows} == {(r["framework"], r["size"]) for r in first["results"]}
    for row in rows:
        peer = row["framework"] in ("torchvision", "gluon_zoo")
        for key, factor in factors.items():
            if key == "script" and peer:  # the peers have no train script (--extra's flax row has)
                assert row[key]["ratio"] is None
            else:
                assert row[key]["ratio"] == pytest.approx(factor), (row["framework"], key)
    assert "bfloat16" in proc.stdout and " 2.00x" in proc.stdout and " 1.25x" in proc.stdout
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"

    second["machine"]["cpu"] = "Another CPU"
    b.write_text(json.dumps(second))
    proc = ratios_cli(a, b)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "differ in more than what is compared (cpu:" in proc.stderr and "Another CPU" in proc.stderr
    b.write_text("{}")
    proc = ratios_cli(a, b)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "cannot read a throughput result there" in proc.stderr
