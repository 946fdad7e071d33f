"""Data parallelism on each framework's own engine (vgg_X/parallel.py): PyTorch DDP under torchrun
(gloo), JAX sharding over 2 host devices and over 2 jax.distributed processes, Gluon over 2 CPU
contexts (kvstore 'device') and over 2 dist_sync workers.

The truth each run is held to: the single-device run with the same flags. With the same global
batch, dropout off and no batch norm, N devices compute the same updates, so after a few SGD steps
(momentum 0.9) every saved array, read with its format's own reader, agrees within float rounding
(measured: 1.5e-6 of each tensor's largest value at most). Two controls show the comparison can
fail: the run a wrong convention would give (lr doubled: gradients summed, not averaged; or the
per-device batch taken as the batch) differs by ~1 of the scale. The biases start at zero, so they
are pure accumulated updates: a wrong gradient scale cannot hide behind the initial weights.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from frameworks import SMALL_RUN
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "common" / "data"
FLAGS = [*SMALL_RUN, "--max-steps", "4", "--init", "kaiming", "--lr", "0.01", "--dropout", "0"]
TOL = 1e-5  # of each tensor's largest absolute value
LAUNCHER_ENV = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "DMLC_ROLE",
    "XLA_FLAGS",
)


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
    return {**e, "OMP_NUM_THREADS": "1", **extra}


def free_port() -> int:
    """A port for a job's scheduler or coordinator, which binds it itself (it cannot be handed a bound
    socket): free now, and below the kernel's ephemeral range, as MXNet's launcher picks (9091 up), so
    that until the job binds it no process's bind(0) or outgoing connection can take it. bind(0) here
    picked it from that range, where even the job's own nodes could take it first: ps-lite's server and
    workers bind(0) ports of their own, and connect before their scheduler listens."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default (macOS and Windows: 49152)
    first = max(1024, min(10000, low - 1000))
    for _ in range(200):
        port = random.SystemRandom().randrange(first, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port in {first}-{low - 1}")


def run_all(cmds, timeout=300) -> list[str]:
    """Start every (argv, env) at once (the processes of one job), wait for all; their outputs."""
    procs = [
        subprocess.Popen(
            c, env=e, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        for c, e in cmds
    ]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:  # a hung job must not outlive the test, nor its children (torchrun's workers)
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def arrays(fw, out: Path, epoch: int) -> dict:
    """The checkpoint's float arrays as NumPy, read with each format's own reader."""
    folder = out / f"checkpoint-epoch{epoch}"
    if fw == "gluon":
        import vgg_gluon  # noqa: F401

        import mxnet as mx

        return {k: v.asnumpy() for k, v in mx.nd.load(str(folder / "model.params")).items()}
    a = load_file(str(folder / ("model.safetensors" if fw == "torch" else "state.safetensors")))
    return {k: v for k, v in a.items() if v.dtype.kind == "f"}  # Flax: model and optimiser state


def differences(a: dict, b: dict) -> dict:
    assert a.keys() == b.keys() and len(a) >= 16
    return {k: float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-30)) for k in a}


def assert_same(a: dict, b: dict) -> None:
    worst = max(differences(a, b).items(), key=lambda kv: kv[1])
    assert worst[1] <= TOL, f"{worst[0]} differs by {worst[1]:.2e} of its scale (tolerance {TOL})"


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def assert_same_metrics(a: Path, b: Path) -> None:
    for ea, eb in zip(metrics(a)["epochs"], metrics(b)["epochs"], strict=True):
        assert eb["examples"] == ea["examples"] == 4 * 32  # every process's examples counted, once
        for k in ("loss", "train_acc", "test_acc"):
            assert eb[k] == pytest.approx(ea[k], rel=1e-5, abs=1e-6), (k, ea, eb)


def train_here(fw, out, *flags):
    import importlib

    importlib.import_module(f"vgg_{fw}.train").main([*FLAGS, *flags, "--out", str(out)])
    return out


# ---------------------------------------------------------------------------- the loader's shards


@pytest.mark.parametrize("n,batch,drop_last", [(2, 16, True), (3, 16, False), (4, 8, False)])
def test_shards_partition_each_global_batch(n, batch, drop_last):
    """The n shards of a global batch, put together in order, are that batch; the epoch's
    number of steps and the order do not change."""
    from common.data import Loader

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (70, 28, 28), dtype=np.uint8), np.arange(70) % 10
    kw = dict(batch_size=batch, resize=32, seed=3, drop_last=drop_last)
    whole = list(Loader(images, labels, **kw).epoch(1))
    parts = [list(Loader(images, labels, shard=(i, n), prefetch=0, **kw).epoch(1)) for i in range(n)]
    assert all(len(p) == len(whole) for p in parts)
    for step, (x, y) in enumerate(whole):
        assert np.array_equal(np.concatenate([p[step][0] for p in parts]), x)
        assert np.array_equal(np.concatenate([p[step][1] for p in parts]), y)
    assert Loader(images, labels, shard=(1, n), **kw).local_batch_size == -(-batch // n)
    with pytest.raises(ValueError, match="shard"):
        Loader(images, labels, shard=(n, n), **kw)


def test_devices_must_split_the_global_batch(capsys):
    from common.cli import parse_train_args
    from common.errors import UsageError

    with pytest.raises(UsageError, match="--batch-size 32 is the global batch"):
        parse_train_args([*FLAGS, "--devices", "3"])
    with pytest.raises(SystemExit):
        parse_train_args([*FLAGS, "--devices", "0"])
    assert parse_train_args([*FLAGS, "--devices", "2"]).devices == 2


def test_only_the_primary_process_prints_and_writes(tmp_path, capsys):
    """A process that is not rank 0 trains and evaluates, but leaves no file and prints nothing."""
    from common import training
    from common.cli import parse_train_args
    from common.contract import TrainConfig
    from vgg_torch.train import Backend

    class Secondary(Backend):
        def __init__(self, args):
            super().__init__(args)
            self.primary = False

    training.run(TrainConfig.from_args(parse_train_args([*FLAGS, "--epochs", "1", "--out", str(tmp_path)])), Secondary)
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr().out == ""


# ---------------------------------------------------------------------------- PyTorch: DDP under torchrun


@pytest.fixture(scope="module")
def torch_runs(tmp_path_factory):
    """Single-process runs (here) and 2-process DDP runs (torchrun, gloo) of the same flags."""
    d = tmp_path_factory.mktemp("torch")
    one = train_here("torch", d / "one", "--epochs", "1")
    train_here("torch", d / "full", "--epochs", "2")
    shutil.copytree(one, d / "one_then_two")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "vgg_torch.train",
    ]
    outs = run_all([([*torchrun, *FLAGS, "--epochs", "1", "--out", str(d / "two")], env())])
    # --devices 2 outside torchrun: main starts torchrun itself
    run_all(
        [
            (
                [
                    sys.executable,
                    "-m",
                    "vgg_torch.train",
                    *FLAGS,
                    "--epochs",
                    "2",
                    "--resume",
                    "--devices",
                    "2",
                    "--out",
                    str(d / "one_then_two"),
                ],
                env(),
            )
        ]
    )
    shutil.copytree(d / "two", d / "two_then_one")
    train_here("torch", d / "two_then_one", "--epochs", "2", "--resume")
    return d, outs[0]


def test_torch_ddp_matches_one_process(torch_runs, tmp_path):
    d, out = torch_runs
    assert_same(arrays("torch", d / "one", 1), arrays("torch", d / "two", 1))
    assert_same_metrics(d / "one", d / "two")
    assert metrics(d / "two")["device"] == "cpu x2 (DistributedDataParallel, gloo)"
    # rank 0 alone reports: one epoch line, one 'wrote', one set of files, no temp files
    assert out.count("epoch 1/1:") == 1 and out.count("wrote ") == 1, out
    assert sorted(p.name for p in (d / "two").iterdir()) == [
        ".vgg-run.json",  # the manifest: the folder is this project's
        "checkpoint-epoch1",
        "checkpoint.json",
        "metrics.json",
        "metrics.png",
        "model.safetensors",
    ]
    # the controls: what a wrong convention would compute is far outside the tolerance
    ref = arrays("torch", d / "one", 1)
    for wrong in (["--lr", "0.02"], ["--batch-size", "16"]):
        got = arrays("torch", train_here("torch", tmp_path / wrong[1], "--epochs", "1", *wrong), 1)
        assert max(differences(ref, got).values()) > 1000 * TOL, wrong


def test_torch_resumes_on_another_device_count(torch_runs):
    d, _ = torch_runs
    full = arrays("torch", d / "full", 2)
    assert_same(full, arrays("torch", d / "two_then_one", 2))  # 1 epoch on 2 processes, then 1 on one
    assert_same(full, arrays("torch", d / "one_then_two", 2))  # and the other way round
    assert_same_metrics(d / "full", d / "one_then_two")


# ---------------------------------------------------------------------------- JAX: a mesh of 2 host devices

FLAX_SCRIPT = """
import json, shutil, sys
from pathlib import Path
import jax
from flax import nnx
from common.cli import parse_train_args
from vgg_flax import train
flags, d = json.loads(sys.argv[1]), Path(sys.argv[2])
assert jax.device_count() == 2, jax.devices()
def main(out, *more):
    train.main([*flags, *more, "--out", str(d / out)])
main("one", "--epochs", "1")
main("two", "--epochs", "1", "--devices", "2")
main("full", "--epochs", "2")
shutil.copytree(d / "one", d / "one_then_two")
main("one_then_two", "--epochs", "2", "--resume", "--devices", "2")
shutil.copytree(d / "two", d / "two_then_one")
main("two_then_one", "--epochs", "2", "--resume", "--devices", "1")
# where the arrays live after a step on 2 devices: parameters on both, replicated; the batch split
import numpy as np
from vgg_flax import parallel
b = train.Backend(parse_train_args([*flags, "--devices", "2"]))
x, y = np.zeros((32, 1, 32, 32), np.float32), np.zeros(32, np.int64)
b.start_epoch(0)
b.fetch(b.train_step(x, y))
x, _ = parallel.shard(b.dp, x, y)
params = jax.tree.leaves(nnx.state(b.model, nnx.Param))
print(json.dumps({"param_devices": sorted({len(p.sharding.device_set) for p in params}),
                  "replicated": all(p.sharding.is_fully_replicated for p in params),
                  "batch_rows_per_device": sorted({s.data.shape[0] for s in x.addressable_shards})}))
"""


@pytest.fixture(scope="module")
def flax_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("flax")
    (out,) = run_all(
        [
            (
                [sys.executable, "-c", FLAX_SCRIPT, json.dumps(FLAGS), str(d)],
                env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
            )
        ]
    )
    return d, json.loads(out.strip().splitlines()[-1])


def test_flax_mesh_matches_one_device(flax_runs):
    d, placement = flax_runs
    assert placement == {"param_devices": [2], "replicated": True, "batch_rows_per_device": [16]}
    assert_same(arrays("flax", d / "one", 1), arrays("flax", d / "two", 1))
    assert_same_metrics(d / "one", d / "two")
    assert metrics(d / "two")["device"] == "cpu:0 x2 (jax.sharding mesh)"


def test_flax_resumes_on_another_device_count(flax_runs):
    d, _ = flax_runs
    full = arrays("flax", d / "full", 2)
    assert_same(full, arrays("flax", d / "two_then_one", 2))
    assert_same(full, arrays("flax", d / "one_then_two", 2))


def test_flax_two_processes_match_one_device(flax_runs, tmp_path):
    """Two jax.distributed processes (one CPU device each, CPU collectives over gloo), as two
    machines would run: each loads its part of every batch; process 0 alone writes."""
    d, _ = flax_runs
    address = f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "vgg_flax.train", *FLAGS, "--epochs", "1", "--out", str(tmp_path)]
    outs = run_all(
        [(cmd, env(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))) for i in range(2)]
    )
    assert outs[0].count("wrote ") == 1 and "wrote " not in outs[1], outs
    assert metrics(tmp_path)["device"] == "cpu:0 x2 (jax.sharding mesh, 2 processes)"
    assert_same(arrays("flax", d / "one", 1), arrays("flax", tmp_path, 1))
    assert_same_metrics(d / "one", tmp_path)


# ---------------------------------------------------------------------------- Gluon: 2 contexts, KVStore


@pytest.fixture(scope="module")
def gluon_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("gluon")
    train_here("gluon", d / "one", "--epochs", "1")
    train_here("gluon", d / "two", "--epochs", "1", "--devices", "2")
    train_here("gluon", d / "full", "--epochs", "2")
    shutil.copytree(d / "one", d / "one_then_two")
    train_here("gluon", d / "one_then_two", "--epochs", "2", "--resume", "--devices", "2")
    shutil.copytree(d / "two", d / "two_then_one")
    train_here("gluon", d / "two_then_one", "--epochs", "2", "--resume")
    return d


def test_gluon_contexts_match_one_context(gluon_runs):
    d = gluon_runs
    assert_same(arrays("gluon", d / "one", 1), arrays("gluon", d / "two", 1))
    assert_same_metrics(d / "one", d / "two")
    assert metrics(d / "two")["device"] == "cpu(0) x2 (kvstore device)"


def test_gluon_resumes_on_another_device_count(gluon_runs):
    d = gluon_runs
    full = arrays("gluon", d / "full", 2)
    assert_same(full, arrays("gluon", d / "two_then_one", 2))
    assert_same(full, arrays("gluon", d / "one_then_two", 2))


# `python -m vgg_gluon.train` with one thing slowed down, as a loaded machine now and then did: the pull
# that brings rank 0's initial block5.conv2.weight into a worker (the Trainer's last key: it sorts the
# parameters by name) waits until that key's first gradients have been summed on the server, or 3 s when
# the worker waits for the pull first. A worker that pushed before its pull was done took the summed
# gradients for its weights: "block5.conv2.weight differs by 1.00e+00 of its scale".
LATE_PULL_WORKER = """
import sys, threading
import vgg_gluon
import mxnet as mx
KEY, pushed, grads, late = 21, threading.Event(), [], []

class Late(mx.operator.CustomOp):  # an engine operation that reads the weights: the pull that writes them waits
    def forward(self, is_train, req, in_data, out_data, aux):
        if pushed.wait(timeout=3):
            grads[0].wait_to_read()  # the server answers a push once every worker's gradients are summed
        self.assign(out_data[0], req[0], in_data[0])

@mx.operator.register("late")
class LateProp(mx.operator.CustomOpProp):
    def infer_shape(self, in_shape):
        return in_shape, in_shape, []
    def create_operator(self, ctx, shapes, dtypes):
        return Late()

KVStore = mx.kvstore.KVStore
broadcast, pushpull = KVStore.broadcast, KVStore.pushpull
def late_broadcast(self, key, value, out, priority=0):  # broadcast = init, then pull
    if key != KEY:
        return broadcast(self, key, value, out, priority)
    self.init(key, value)
    late.append(mx.nd.Custom(out[0], op_type="late"))
    self.pull(key, out=out, priority=priority)
def noted_pushpull(self, key, value, out=None, priority=0):
    pushpull(self, key, value, out=out, priority=priority)
    if key == KEY and not pushed.is_set():
        grads.append(value[0])
        pushed.set()
KVStore.broadcast, KVStore.pushpull = late_broadcast, noted_pushpull
from vgg_gluon.train import main
main(sys.argv[1:])
assert late, f"the Trainer has no key {KEY}: the model changed, and this worker slowed down nothing"
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the loopback interface is named 'lo' on Linux")
def test_gluon_dist_sync_workers_match_one_context(gluon_runs, tmp_path):
    """A scheduler, a server and two dist_sync workers on this machine, given the DMLC_* environment
    that MXNet's tools/launch.py gives them on several; one initial pull comes late (LATE_PULL_WORKER)."""
    common = dict(
        DMLC_PS_ROOT_URI="127.0.0.1",
        DMLC_PS_ROOT_PORT=str(free_port()),
        DMLC_NUM_SERVER="1",
        DMLC_NUM_WORKER="2",
        DMLC_INTERFACE="lo",
    )
    node = [sys.executable, "-c", "import vgg_gluon, mxnet"]  # importing mxnet runs a scheduler or server
    worker = [sys.executable, "-c", LATE_PULL_WORKER, *FLAGS, "--epochs", "1", "--out", str(tmp_path)]
    outs = run_all(
        [
            (node, env(DMLC_ROLE="scheduler", **common)),
            (node, env(DMLC_ROLE="server", **common)),
            (worker, env(DMLC_ROLE="worker", **common)),
            (worker, env(DMLC_ROLE="worker", **common)),
        ]
    )
    assert sum(o.count("wrote ") for o in outs) == 1, outs
    assert "kvstore dist_sync, worker 0 of 2" in metrics(tmp_path)["device"]
    assert_same(arrays("gluon", gluon_runs / "one", 1), arrays("gluon", tmp_path, 1))
    assert_same_metrics(gluon_runs / "one", tmp_path)
