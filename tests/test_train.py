"""Training in the three frameworks: it learns, it reports, it resumes exactly, it stops on NaN,
and the side-by-side runner reports all three. Small VGGs (width ratio 8, 32 px) keep it quick."""

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from frameworks import SAMPLE, SMALL, SMALL_RUN, reference_update
from safetensors.numpy import load_file

from common import FRAMEWORKS, compare, training

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "fashion-mnist"
# The real data set where it is at hand (development machines, CI), else the bundled sample.
DATA = str(SHARED if (SHARED / "t10k-labels-idx1-ubyte.gz").is_file() else SAMPLE)
# 300 steps of 64: one pass over 19,200 images, or 4 x 75 steps over the sample's 6,000.
EPOCHS, STEPS = (1, 300) if DATA == str(SHARED) else (4, 75)
TINY = [*SMALL_RUN, "--max-steps", "4", "--init", "kaiming"]  # + --lr
CHECKPOINT_FILES = {
    "torch": {"model.safetensors", "state.pt", "epoch.json"},
    "gluon": {"model.params", "trainer.states", "state.json"},
    "flax": {"state.safetensors", "state.json"},
}
# Same threshold for the three frameworks (chance is 0.1). Measured after 300 Adam steps of 64:
# 0.7x-0.8x in each; the margin covers seeds, thread counts and the bundled sample.
LEARNS = 0.6


def train(fw, out, *flags):
    importlib.import_module(f"vgg_{fw}.train").main([*flags, "--out", str(out)])
    return json.loads((out / "metrics.json").read_text())


def checkpoint_arrays(fw, folder: Path) -> dict:
    """The model's arrays as NumPy, read with each format's own reader (not the code under test)."""
    if fw == "gluon":
        import mxnet as mx

        return {k: v.asnumpy() for k, v in mx.nd.load(str(folder / "model.params")).items()}
    arrays = load_file(str(folder / ("model.safetensors" if fw == "torch" else "state.safetensors")))
    return {k: v for k, v in arrays.items() if fw == "torch" or k.startswith("model/")}


@pytest.mark.slow
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_learns_and_reports(fw, tmp_path):
    """300 Adam steps on real Fashion-MNIST (or the bundled sample) reach far above chance; every
    report is there and well formed."""
    m = train(
        fw,
        tmp_path,
        *SMALL,
        "--data-dir",
        DATA,
        "--batch-size",
        "64",
        "--optimizer",
        "adam",
        "--lr",
        "1e-3",
        "--epochs",
        str(EPOCHS),
        "--max-steps",
        str(STEPS),
    )
    e = m["epochs"][-1]
    assert len(m["epochs"]) == EPOCHS and len(m["curve"]) == 5 * EPOCHS
    assert e["test_acc"] >= LEARNS, e
    assert m["curve"][0]["loss"] > e["loss"] * 1.2 and e["train_acc"] > 0.4
    assert m["status"] == "finished" and m["framework"] == fw and m["parameters"] == 445_482  # common.arch's count
    assert m["config"]["lr"] == 1e-3 and m["data"]["source"] in ("full", "sample") and m["device"]
    assert e["examples"] == STEPS * 64 and e["examples_per_sec"] > 0
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pointer = json.loads((tmp_path / "checkpoint.json").read_text())
    assert pointer["epoch"] == EPOCHS
    assert {p.name for p in (tmp_path / pointer["folder"]).iterdir()} == CHECKPOINT_FILES[fw]
    hidden = [p.name for p in tmp_path.glob(".*")]
    assert hidden == [".vgg-run.json"], f"temp files left behind: {hidden}"  # the manifest alone stays
    # the exported weights, evaluated by the NEXT framework, give this run's test accuracy
    other = FRAMEWORKS[(FRAMEWORKS.index(fw) + 1) % len(FRAMEWORKS)]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            f"vgg_{other}.evaluate",
            "--weights",
            str(tmp_path / "model.safetensors"),
            "--data-dir",
            DATA,
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"saved by {fw}" in out, out
    correct, total = (int(v.replace(",", "")) for v in re.search(r"\(([\d,]+) / ([\d,]+)\)", out).groups())
    assert abs(correct - e["test_acc"] * total) <= 3, (out, e)  # a near-tie may flip in float rounding


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_resume_matches_uninterrupted(fw, tmp_path):
    """2 epochs in one go == 1 epoch, then --resume for the second: same metrics, same weights."""
    a = train(fw, tmp_path / "a", *TINY, "--lr", "0.01", "--epochs", "2")
    train(fw, tmp_path / "b", *TINY, "--lr", "0.01", "--epochs", "1")
    b = train(fw, tmp_path / "b", *TINY, "--lr", "0.01", "--epochs", "2", "--resume")
    assert len(a["epochs"]) == len(b["epochs"]) == 2
    for ea, eb in zip(a["epochs"], b["epochs"]):
        for k in ("loss", "train_acc", "test_acc"):
            assert eb[k] == pytest.approx(ea[k], rel=1e-5, abs=1e-6), (k, ea, eb)
    wa, wb = (checkpoint_arrays(fw, tmp_path / x / "checkpoint-epoch2") for x in "ab")
    assert wa.keys() == wb.keys() and len(wa) >= 16
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_nan_loss_stops_and_keeps_last_good_checkpoint(fw, tmp_path, capsys):
    train(fw, tmp_path, *TINY, "--lr", "0.01", "--epochs", "1")
    good = checkpoint_arrays(fw, tmp_path / "checkpoint-epoch1")
    with pytest.raises(SystemExit) as e:  # a fresh run into the same folder, with an absurd learning rate
        train(fw, tmp_path, *TINY, "--lr", "1e6", "--epochs", "2", "--overwrite")
    err = capsys.readouterr().err
    assert e.value.code == 1 and "Lower the learning rate" in err and "Traceback" not in err, err
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["status"] == "diverged" and not m["epochs"]
    kept = checkpoint_arrays(fw, tmp_path / "checkpoint-epoch1")
    assert all(np.array_equal(kept[k], good[k]) for k in good)


def test_compare_reports_three_frameworks(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "common.compare",
            *TINY,
            "--lr",
            "0.01",
            "--epochs",
            "1",
            "--max-steps",
            "3",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [row["framework"] for row in report["rows"]] == ["torch", "gluon", "flax"]
    assert all(row["status"] == "finished" and row["parameters"] == 445_482 for row in report["rows"])
    assert report["same_init"] and (tmp_path / "init.safetensors").is_file()  # the default: one start for all
    speed, accuracy = [
        [line for line in block.splitlines() if line.startswith("| ")]
        for block in (tmp_path / "report.md").read_text().split("\n\n")
        if block.startswith("| ")
    ]
    assert len(speed) == 4 and "examples/s" in speed[0]  # a header and a row per framework, in each table
    assert len(accuracy) == 4 and "best test acc" in accuracy[0] and accuracy[1].startswith("| torch | 1 |")
    assert "| torch | 445,482 |" in r.stdout
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    for fw in FRAMEWORKS:
        assert (tmp_path / fw / "metrics.json").is_file()


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--no-cpu-workarounds", "--preset", "cpu", "--scale-classifier"],
        ["--preset", "paper", "--no-augment", "--init-from", "w.safetensors", "--init-partial"],
    ],
)
def test_compare_passes_every_flag_on_unchanged(flags):
    """What each framework's child process parses is what common.compare parsed, flag by flag
    (a store_false flag such as --no-cpu-workarounds included, and presets spelled out)."""
    from common.cli import parse_train_args, train_parser

    args = parse_train_args(flags)
    child = parse_train_args(compare.child_argv(args, train_parser("", "")))
    skip = compare.NOT_PASSED | {"preset"}
    assert {k: v for k, v in vars(child).items() if k not in skip} == {
        k: v for k, v in vars(args).items() if k not in skip
    }


def test_pixels_d2l_reaches_the_batches(tmp_path, monkeypatch):
    """--pixels d2l is passed through the train command to the loaders it builds (training and test),
    and is recorded in metrics.json's config; one step from the same start then ends elsewhere."""
    from common import data

    seen = []
    real = data.Loader.__init__

    def spy(self, *a, **kw):
        seen.append(kw.get("pixels", "float"))
        real(self, *a, **kw)

    monkeypatch.setattr(data.Loader, "__init__", spy)
    runs = {
        p: train("torch", tmp_path / p, *TINY, "--lr", "0.01", "--epochs", "1", "--max-steps", "1", "--pixels", p)
        for p in ("float", "d2l")
    }
    assert seen == ["float", "float", "d2l", "d2l"]
    assert runs["d2l"]["config"]["pixels"] == "d2l"
    w = {p: load_file(str(tmp_path / p / "model.safetensors"))["block1.conv1.weight"] for p in runs}
    assert not np.array_equal(w["d2l"], w["float"])


def test_compare_reports_a_failing_framework(tmp_path, monkeypatch):
    monkeypatch.setitem(compare.FRAMEWORKS, "broken", "common.no_such_module")
    row = compare.run_one("broken", [], tmp_path / "broken")
    assert row["status"] == "failed (exit 1)" and "No module named" in row["error"]
    assert "| broken | - |" in compare.table([row]) and "failed (exit 1)" in compare.table([row])


def test_compare_redoes_its_own_runs_only_when_told(tmp_path, monkeypatch, capsys):
    """A second comparison into the same --out is refused while <framework>/ holds the first one's
    run; --overwrite redoes the runs there, --resume continues them."""
    calls = []

    def fake(framework, argv, out):
        calls.append(argv)
        out.mkdir(parents=True, exist_ok=True)
        pointer = {"epoch": 1, "folder": "checkpoint-epoch1", "framework": framework}
        (out / "checkpoint.json").write_text(json.dumps(pointer))
        return {
            "framework": framework,
            "status": "finished",
            "seconds": 0.0,
            "command": "",
            "curve": [{"epoch": 1, "loss": 1.0, "train_acc": 0.5}],
            "epochs": [{"epoch": 1, "test_acc": 0.5}],
        }

    monkeypatch.setattr(compare, "run_one", fake)
    compare.main([*TINY, "--lr", "0.01", "--out", str(tmp_path), "--no-same-init"])
    with pytest.raises(SystemExit) as e:
        compare.main([*TINY, "--lr", "0.01", "--out", str(tmp_path), "--no-same-init"])
    assert e.value.code == 2 and "already holds a run" in capsys.readouterr().err
    compare.main([*TINY, "--lr", "0.01", "--out", str(tmp_path), "--no-same-init", "--overwrite"])
    compare.main([*TINY, "--lr", "0.01", "--out", str(tmp_path), "--no-same-init", "--resume"])
    assert [a.count("--overwrite") for a in calls] == [0, 0, 0, 1, 1, 1, 0, 0, 0]
    assert [a.count("--resume") for a in calls] == [0, 0, 0, 0, 0, 0, 1, 1, 1]


def apply_updates(fw, optimizer, w0, grads, lr, momentum):
    """One weight vector, given gradients, the framework's own make_optimizer."""
    from argparse import Namespace

    args = Namespace(optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=0.0, decay_all=False)
    make_optimizer = importlib.import_module(f"vgg_{fw}.train").make_optimizer
    if fw == "torch":
        import torch

        net = torch.nn.Linear(1, len(w0), bias=False)
        net.weight.data[:] = torch.tensor(w0).reshape(-1, 1)
        opt = make_optimizer(net, args)
        for g in grads:
            net.weight.grad = torch.tensor(g).reshape(-1, 1)
            opt.step()
        return net.weight.detach().numpy().ravel()
    if fw == "gluon":
        import mxnet as mx
        from mxnet import autograd, gluon

        net = gluon.nn.Dense(len(w0), in_units=1, use_bias=False)
        net.initialize()
        net.weight.set_data(mx.nd.array(w0.reshape(-1, 1)))
        trainer = make_optimizer(net, args)
        for g in grads:
            with autograd.record():  # d/dW of sum(g * (1 @ W.T)) is g
                loss = (net(mx.nd.ones((1, 1))) * mx.nd.array(g.reshape(1, -1))).sum()
            loss.backward()
            trainer.step(1)
        return net.weight.data().asnumpy().ravel()
    import jax
    from flax import nnx

    model = nnx.Linear(1, len(w0), use_bias=False, rngs=nnx.Rngs(0))
    model.kernel[...] = jax.numpy.asarray(w0.reshape(1, -1))
    opt = make_optimizer(model, args)
    for g in grads:
        opt.update(model, jax.tree.map(lambda _: jax.numpy.asarray(g.reshape(1, -1)), nnx.state(model, nnx.Param)))
    return np.asarray(model.kernel[...]).ravel()


@pytest.mark.parametrize("optimizer,lr,momentum", [("sgd", 0.1, 0.9), ("sgd", 0.05, 0.0), ("adam", 1e-3, 0.0)])
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_optimizers_follow_the_same_update(fw, optimizer, lr, momentum):
    """Gradients from 1e-2 down to 1e-8, where Adam's eps placement shows (MXNet's own Adam is off
    by ~1e-5 here; vgg_gluon.train.Adam is not)."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=8).astype(np.float32)
    grads = [(rng.normal(size=8) * 10.0 ** -rng.integers(2, 9, size=8)).astype(np.float32) for _ in range(8)]
    want = reference_update(optimizer, w0, grads, [lr] * len(grads), momentum=momentum)
    assert np.abs(want - w0).max() > 1e-3  # the weights do move
    np.testing.assert_allclose(apply_updates(fw, optimizer, w0, grads, lr, momentum), want, rtol=0, atol=1e-6)


def test_padded_batches_keep_one_shape():
    from common.data import Loader

    loader = Loader(np.zeros((70, 28, 28), np.uint8), np.arange(70) % 10, batch_size=32, resize=32, shuffle=False)
    got = list(training.padded_batches(loader))
    assert [x.shape[0] for x, _, _ in got] == [32, 32, 32] and [v for *_, v in got] == [32, 32, 6]
    assert [len(y) for _, y, _ in got] == [32, 32, 6]


# ---------------------------------------------------------------------------- GPU (skipped without one)


def gpu_backend(fw):
    """The framework's Backend on its GPU, or a skip that says which framework sees none."""
    if fw == "torch":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("no GPU visible to torch")
    elif fw == "gluon":
        import vgg_gluon  # noqa: F401

        import mxnet as mx

        if mx.context.num_gpus() == 0:
            pytest.skip("no GPU visible to MXNet (a CPU-only mxnet wheel, or no device)")
    else:
        import jax

        try:
            jax.devices("gpu")
        except RuntimeError:
            pytest.skip("no GPU visible to JAX (jax without its CUDA plugin, or no device)")
    return importlib.import_module(f"vgg_{fw}.train").Backend


@pytest.mark.gpu
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_trains_on_gpu(fw):
    from common.cli import parse_train_args
    from common.data import Loader, load_fashion_mnist

    Backend = gpu_backend(fw)
    b = Backend(
        parse_train_args([*SMALL, "--device", "gpu", "--batch-size", "64", "--optimizer", "adam", "--lr", "1e-3"])
    )
    assert b.device in ("cuda:0", "gpu(0)", "gpu:0")
    if fw == "torch":
        assert all(p.is_cuda for p in b.net.parameters())
    elif fw == "gluon":
        assert all(p.list_ctx() == b.ctx for p in b.net.collect_params().values())  # b.ctx: the list of contexts
    else:
        import jax
        from flax import nnx

        assert all(leaf.devices() == {b.dev} for leaf in jax.tree.leaves(nnx.state(b.model, nnx.Param)))
    data = load_fashion_mnist(DATA)
    loader = Loader(data.train_images, data.train_labels, batch_size=64, resize=32, drop_last=True)
    b.start_epoch(0)
    losses = []
    for step, (x, y) in enumerate(loader.epoch(0)):
        losses.append(b.fetch(b.train_step(x, y))[0] / len(y))
        if step == 299:
            break
    assert np.mean(losses[-30:]) < 0.7 * np.mean(losses[:30]), (losses[:30], losses[-30:])


KEEP_PROBE = """
import ctypes, sys
import numpy as np
from common.training import keep_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
before = mallinfo2().hblks  # blocks mapped on their own (import-time ones included)
a = np.ones(100 << 20, np.uint8)  # 100 MiB, as one large activation
mmapped = mallinfo2().hblks - before
del a
print(kept, mmapped, mallinfo2().fordblks >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_keep_freed_memory_serves_large_blocks_from_the_heap_and_keeps_them():
    """The train scripts' allocator setting: a large block comes from malloc's heap, not an mmap
    of its own, and stays with malloc (free for the next step) after it is freed. Without it,
    glibc maps the block and unmaps it on free."""

    def probe(mode):
        out = subprocess.run(
            [sys.executable, "-c", KEEP_PROBE, mode], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        return out[0], int(out[1]), int(out[2])

    kept, mmapped, free_mib = probe("keep")
    assert kept == "True" and mmapped == 0 and free_mib >= 100
    _, mmapped, free_mib = probe("default")
    assert mmapped == 1 and free_mib < 100
