"""The training recipe (common/recipe.py, the recipe flags of common/cli.py): starting from given
weights, the proof that the three frameworks train alike from the same start, weight decay and the
learning-rate schedules against NumPy, augmentation pixel by pixel, mixed precision, resuming.
Small VGGs (width ratio 8 or 16, 32 px, batch 16), the bundled sample, one thread."""

import importlib
import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from frameworks import SAMPLE, SMALL, reference_update
from safetensors.numpy import save_file

from common import FRAMEWORKS, compare, recipe, training
from common.cli import PRESETS, parse_train_args
from common.contract import TrainConfig
from common.data import Loader, augment_batch, augment_draws, augment_pad
from common.errors import WeightsError
from common.weights import expected_canonical, load_weights

ROOT = Path(__file__).resolve().parents[1]
BASE = [
    *SMALL,
    "--data-dir",
    str(SAMPLE),
    "--batch-size",
    "16",
    "--max-steps",
    "20",
    "--epochs",
    "1",
    "--normalize",
    "--init",
    "kaiming",
]
# Dropout 0, so that the frameworks' different random generators play no part.
PARITY = [*BASE, "--dropout", "0", "--no-progress"]
# SGD with momentum under a warm-up that changes the learning rate at every one of the 20 steps
# (where MXNet's own momentum convention departs from torch's), and Adam.
RECIPES = {
    "sgd": ["--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.05", "--warmup-epochs", "1"],
    "adam": ["--optimizer", "adam", "--lr", "1e-3"],
}
# How far apart three correct implementations may drift in 20 steps (compare.step_loss_gap: the
# largest difference between two frameworks' batch-mean training loss, at any of the 20 steps).
#
# Step 1 differs by the forward pass's rounding alone: every logit is a float32 sum of up to
# 576 products per convolution output (3x3x64) through 8 layers, which the three libraries add in
# different orders; each sum's relative error is about sqrt(n) * 2**-24 = 1.4e-6 and the layers
# compound it to ~1e-5 of the loss at worst. metrics.json keeps 7 significant digits, so the
# loss (~2.3) is read to 1e-6: measured 1e-6 at step 1 in each recipe.
# SGD's update is linear in the gradient: these relative differences pass into the weights at
# their own size and grow only through the loss's curvature; measured <= 2e-6 over the 20 steps.
# 1e-4 leaves a factor of 50 for other CPUs' and libraries' summation orders.
# Adam amplifies rounding: it divides each gradient component by its own running RMS, so a
# component whose exact gradient is near 0 (a sum over the batch that cancels) takes a step of
# size ~lr (1e-3 here) in a direction that rounding decides. A few weights then differ by ~lr
# between frameworks, and where such a change moves a ReLU across 0 the losses part further:
# measured 1e-6 at step 1, 5e-5 at step 10, 6e-3 at step 20 (Flax against PyTorch; PyTorch
# against Gluon 5e-4). 2e-2 = lr * 20 steps is the loss change of every weight that moved
# a full step the other way, with the loss's gradient of order 1 in them.
TOLERANCE = {"sgd": 1e-4, "adam": 2e-2}


def run_main(fw, out, *flags):
    importlib.import_module(f"vgg_{fw}.train").main([*flags, "--out", str(out)])
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def same_init(tmp_path_factory):
    """One set of initial weights for the parity tests, drawn as compare --same-init draws them."""
    path = tmp_path_factory.mktemp("init") / "init.safetensors"
    importlib.import_module("vgg_torch.weights").draw(parse_train_args(PARITY), path)
    return path


def step_losses(tmp_path, same_init, fw, optimizer):
    m = run_main(fw, tmp_path / f"{fw}-{optimizer}", *PARITY, *RECIPES[optimizer], "--init-from", str(same_init))
    assert m["status"] == "finished" and len(m["step_loss"]) == 20 and m["steps_per_epoch"] == 20
    return {"framework": fw, "step_loss": m["step_loss"]}


@pytest.fixture(scope="module")
def parity_runs(tmp_path_factory, same_init):
    """Each framework, each recipe, 20 steps from the same weights on the same batches."""
    tmp = tmp_path_factory.mktemp("parity")
    return {opt: [step_losses(tmp, same_init, fw, opt) for fw in FRAMEWORKS] for opt in RECIPES}


@pytest.mark.parametrize("optimizer", list(RECIPES))
def test_frameworks_train_alike_from_the_same_start(parity_runs, optimizer):
    rows = parity_runs[optimizer]
    gap = compare.step_loss_gap(rows)
    assert len(gap) == 20
    assert gap.max() <= TOLERANCE[optimizer], (optimizer, gap)
    assert abs(rows[0]["step_loss"][-1] - rows[0]["step_loss"][0]) > 10 * TOLERANCE["sgd"]  # the loss does move


def test_a_wrong_momentum_convention_is_caught(parity_runs, same_init, tmp_path, monkeypatch):
    """MXNet's own SGD (m = momentum*m - lr*g; w += m) in Gluon, under the warm-up's changing rate:
    the same check, the same tolerance, fails."""
    import vgg_gluon.train as G

    import mxnet as mx

    monkeypatch.setattr(G, "SGD", lambda momentum=0.0, **kw: mx.optimizer.SGD(momentum=momentum, **kw))
    rows = [parity_runs["sgd"][0], step_losses(tmp_path, same_init, "gluon", "sgd"), parity_runs["sgd"][2]]
    assert compare.step_loss_gap(rows).max() > 10 * TOLERANCE["sgd"]


def test_adam_with_its_epsilon_inside_the_square_root_is_caught(parity_runs, same_init, tmp_path, monkeypatch):
    """Flax with w -= lr * m_hat / sqrt(v_hat + eps) instead of / (sqrt(v_hat) + eps): caught."""
    import optax

    adam = optax.adam
    monkeypatch.setattr(optax, "adam", lambda lr, b1, b2, eps: adam(lr, b1=b1, b2=b2, eps=0.0, eps_root=eps))
    rows = [*parity_runs["adam"][:2], step_losses(tmp_path, same_init, "flax", "adam")]
    assert compare.step_loss_gap(rows).max() > 2 * TOLERANCE["adam"]


# ---------------------------------------------------------------------------- one update against NumPy

SMALL_BN = dict(
    arch="vgg11_bn", width_ratio=16, scale_classifier=True, in_channels=1, num_classes=10, dropout=0.0, resize=32
)


def framework_updates(fw, optimizer, w0, grads, lrs, wd):
    """Canonical weights w0, then one framework's own optimiser (make_optimizer, set_lr) given
    these canonical gradients at these learning rates; returns the canonical weights."""
    args = Namespace(
        optimizer=optimizer, lr=lrs[0], momentum=0.9 if optimizer == "sgd" else 0.0, weight_decay=wd, decay_all=False
    )
    spec_kw = dict(in_channels=1, num_classes=10, image_size=32, width_ratio=16, scale_classifier=True, dropout=0.0)
    T, W = importlib.import_module(f"vgg_{fw}.train"), importlib.import_module(f"vgg_{fw}.weights")
    if fw == "torch":
        import torch

        net = W.from_canonical(importlib.import_module("vgg_torch.model").vgg("vgg11_bn", **spec_kw), w0)
        opt = T.make_optimizer(net, args)
        params = dict(net.named_parameters())
        for g, lr in zip(grads, lrs):
            T.set_lr(opt, lr)
            for k, p in params.items():
                p.grad = torch.from_numpy(g[k].copy())
            opt.step()
        return W.to_canonical(net)
    if fw == "gluon":
        import mxnet as mx
        from mxnet import autograd

        net = importlib.import_module("vgg_gluon.model").vgg("vgg11_bn", **spec_kw)
        W.from_canonical(net, w0)
        trainer = T.make_optimizer(net, args)
        params = {k: p for k, p in W.canonical_params(net).items() if p.grad_req != "null"}
        for g, lr in zip(grads, lrs):
            trainer.set_learning_rate(lr)
            with autograd.record():  # d/dw of sum(g * w) is g
                loss = mx.nd.add_n(*[(p.data() * mx.nd.array(g[k])).sum() for k, p in params.items()])
            loss.backward()
            trainer.step(1)
        return W.to_canonical(net)
    from flax import nnx

    model = W.from_canonical(importlib.import_module("vgg_flax.model").vgg("vgg11_bn", **spec_kw), w0)
    grad_model = importlib.import_module("vgg_flax.model").vgg("vgg11_bn", **spec_kw)
    opt = T.make_optimizer(model, args)
    for g, lr in zip(grads, lrs):
        T.set_lr(opt, lr)
        W.from_canonical(grad_model, {**w0, **g})  # the gradients laid out as Flax's parameters
        opt.update(model, nnx.state(grad_model, nnx.Param))
    return W.to_canonical(model)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_weight_decay_and_a_changing_rate_follow_numpy(fw, optimizer):
    """Three updates at learning rates 0.1, 0.03, 0.2 (0.01, 0.003, 0.02 for Adam) with weight
    decay 0.05: convolution and dense weights decay, biases and batch-norm parameters do not; SGD's
    momentum is torch's v whatever the rate does (MXNet's own convention would differ from step 2)."""
    from common.arch import make_spec

    spec = make_spec("vgg11_bn", in_channels=1, num_classes=10, image_size=32, width_ratio=16, scale_classifier=True)
    rng = np.random.default_rng(1)
    w0 = {k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in expected_canonical(spec).items()}
    w0 = {k: np.abs(v) + 0.5 if k.endswith("running_var") else v for k, v in w0.items()}
    trainable = [k for k in w0 if not k.endswith(("running_mean", "running_var"))]
    grads = [
        {
            k: (rng.normal(size=w0[k].shape) * 10.0 ** -rng.integers(1, 5, size=w0[k].shape)).astype(np.float32)
            for k in trainable
        }
        for _ in range(3)
    ]
    lrs = [0.1, 0.03, 0.2] if optimizer == "sgd" else [0.01, 0.003, 0.02]
    got = framework_updates(fw, optimizer, w0, grads, lrs, wd=0.05)
    for k in trainable:
        decayed = k.endswith(".weight") and ".bn" not in k  # hand-written: conv and fc weights only
        want = reference_update(optimizer, w0[k], [g[k] for g in grads], lrs, weight_decay=0.05 if decayed else 0.0)
        np.testing.assert_allclose(got[k], want, rtol=0, atol=2e-6, err_msg=f"{fw} {optimizer} {k}")
    for k in ("block1.bn1.running_mean", "block1.bn1.running_var"):
        np.testing.assert_array_equal(got[k], w0[k])


# ---------------------------------------------------------------------------- schedules


def schedule_args(**kw):
    base = dict(
        lr=0.1, epochs=4, warmup_epochs=0.0, lr_schedule="constant", lr_step_epochs=2, lr_factor=0.1, plateau_patience=2
    )
    return Namespace(**{**base, **kw})


def test_learning_rate_schedules_by_hand():
    lr = lambda step, accs=(), **kw: recipe.learning_rate(schedule_args(**kw), step, 10, accs)  # 10 steps per epoch
    assert lr(0) == lr(39) == 0.1
    # warm-up over 1 epoch = 10 steps: 0.01, 0.02, ..., 0.1, then the schedule
    assert [round(lr(k, warmup_epochs=1), 10) for k in (0, 1, 9, 10, 30)] == [0.01, 0.02, 0.1, 0.1, 0.1]
    assert [round(lr(k, warmup_epochs=0.5), 10) for k in (0, 4, 5)] == [0.02, 0.1, 0.1]
    # step: x0.1 every 2 epochs
    assert [round(lr(k, lr_schedule="step"), 10) for k in (0, 19, 20, 39)] == [0.1, 0.1, 0.01, 0.01]
    # cosine over the 30 steps after a 1-epoch warm-up: t = step - 10 of T = 30
    cos = lambda k: lr(k, lr_schedule="cosine", warmup_epochs=1)
    assert cos(10) == pytest.approx(0.1) and cos(25) == pytest.approx(0.05)
    assert cos(39) == pytest.approx(0.1 * (1 + np.cos(np.pi * 29 / 30)) / 2) and cos(39) > 0  # the last step
    assert lr(0, lr_schedule="cosine") == 0.1 and lr(20, lr_schedule="cosine") == pytest.approx(0.05)
    # plateau, patience 2: a drop after two epochs in a row without a new best
    plateau = lambda accs: lr(0, accs, lr_schedule="plateau")
    assert plateau([]) == plateau([0.5, 0.6]) == plateau([0.5, 0.6, 0.6]) == 0.1
    assert plateau([0.5, 0.6, 0.6, 0.59]) == pytest.approx(0.01)
    assert plateau([0.5, 0.6, 0.6, 0.59, 0.7, 0.7, 0.6]) == pytest.approx(0.001)
    assert plateau([0.5, 0.6, 0.6, 0.59, 0.55]) == pytest.approx(0.01)  # counting starts again after a drop


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_resume_continues_the_schedule_exactly(fw, tmp_path):
    """Warm-up over half an epoch then a step decay at each epoch, with augmentation and weight
    decay: 2 epochs in one go == 1 epoch, then --resume: the same loss at every step, the same
    learning rates; and --resume refuses a changed recipe flag."""
    flags = [
        *BASE,
        "--max-steps",
        "4",
        "--optimizer",
        "sgd",
        "--momentum",
        "0.9",
        "--lr",
        "0.05",
        "--warmup-epochs",
        "0.5",
        "--lr-schedule",
        "step",
        "--lr-step-epochs",
        "1",
        "--augment",
        "--weight-decay",
        "5e-4",
        "--no-progress",
    ]
    a = run_main(fw, tmp_path / "a", *flags, "--epochs", "2")
    run_main(fw, tmp_path / "b", *flags, "--epochs", "1")
    b = run_main(fw, tmp_path / "b", *flags, "--epochs", "2", "--resume")
    assert [e["lr"] for e in a["epochs"]] == [e["lr"] for e in b["epochs"]]
    assert np.allclose([e["lr"] for e in a["epochs"]], [[0.025, 0.05], [0.005, 0.005]], rtol=1e-12)
    np.testing.assert_allclose(b["step_loss"], a["step_loss"], rtol=1e-5)
    assert len(a["step_loss"]) == 8
    with pytest.raises(SystemExit) as e:
        run_main(fw, tmp_path / "b", *flags, "--epochs", "3", "--resume", "--weight-decay", "1e-3")
    assert e.value.code == 2


def test_resume_refuses_another_length_for_a_cosine_run(tmp_path, capsys):
    flags = [
        *BASE,
        "--max-steps",
        "2",
        "--optimizer",
        "sgd",
        "--lr",
        "0.01",
        "--lr-schedule",
        "cosine",
        "--no-progress",
    ]
    run_main("torch", tmp_path, *flags, "--epochs", "1")
    with pytest.raises(SystemExit) as e:
        run_main("torch", tmp_path, *flags, "--epochs", "2", "--resume")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "cosine" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- augmentation


def test_augment_batch_exact_pixels():
    """A hand-built 4x4 image, padding 1 (fill -1): offsets (0, 2) cut rows -1..2 and columns
    1..4 of the original; then the flip mirrors that window left-right."""
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    augment_batch(x, np.array([0]), np.array([2]), np.array([False]), pad=1, fill=-1.0)
    np.testing.assert_array_equal(x[0], [[-1, -1, -1, -1], [1, 2, 3, -1], [5, 6, 7, -1], [9, 10, 11, -1]])
    y = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    augment_batch(y, np.array([1]), np.array([1]), np.array([True]), pad=1, fill=-1.0)  # no shift, mirrored
    np.testing.assert_array_equal(y[0], [[3, 2, 1, 0], [7, 6, 5, 4], [11, 10, 9, 8], [15, 14, 13, 12]])
    assert augment_pad(32) == 4 and augment_pad(224) == 28 and augment_pad(96) == 12


def test_loader_augments_the_same_pixels_for_every_framework_and_sharding():
    """Images whose pixel values are their own coordinates at 32 px (no resizing): every augmented
    image is the window the documented draws say, from default_rng((seed, epoch, 2, batch)); the
    two halves of a sharded batch are exactly the unsharded batch; and the draws vary."""
    images = (np.arange(32 * 32).reshape(1, 32, 32) % 251 + np.arange(6)[:, None, None]).astype(np.uint8)
    labels = np.arange(6)
    kw = dict(batch_size=6, resize=32, seed=3, shuffle=False, augment=True, prefetch=0)
    x, _ = next(Loader(images, labels, **kw).epoch(1))
    dy, dx, flip = augment_draws(np.random.default_rng((3, 1, 2, 0)), 6, 4)
    for i in range(6):
        padded = np.zeros((40, 40), np.float32)
        padded[4:36, 4:36] = images[i] / 255
        want = padded[dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        np.testing.assert_allclose(x[i, 0], want[:, ::-1] if flip[i] else want, rtol=1e-6)
    halves = [next(Loader(images, labels, **kw, shard=(s, 2)).epoch(1))[0] for s in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), x)
    assert len({(a, b, c) for a, b, c in zip(dy, dx, flip)}) > 3
    plain, _ = next(Loader(images, labels, **{**kw, "augment": False}).epoch(1))
    np.testing.assert_allclose(plain[:, 0], images / 255, rtol=1e-6)


# ---------------------------------------------------------------------------- starting weights


def backend(fw, *flags):
    args = TrainConfig.from_args(parse_train_args([*PARITY, "--max-steps", "1", *flags]))
    return args, importlib.import_module(f"vgg_{fw}.train").Backend(args)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_init_partial_copies_what_fits_and_draws_the_rest(fw, tmp_path, capsys):
    """VGG-13 from a VGG-11 file (the paper's section 3.1): the tensors with the same name and shape
    are copied (block1.conv1, block2.conv1, ..., the dense layers), the rest keep their draw."""
    from common.weights import save_weights, spec_metadata

    a = {k: np.full(s, 0.125, np.float32) for k, s in expected_canonical(parse_spec("vgg11")).items()}
    save_weights(tmp_path / "a.safetensors", a, spec_metadata(parse_spec("vgg11")))
    args, b = backend(fw, "--arch", "vgg13", "--init-from", str(tmp_path / "a.safetensors"), "--init-partial")
    drawn = b.canonical()
    training._init_from(args, b, print)
    got, out = b.canonical(), capsys.readouterr().out
    copied = [k for k in got if k in a and a[k].shape == got[k].shape]
    assert "block1.conv1.weight" in copied and "fc1.weight" in copied and "block1.conv2.weight" not in copied
    for k in got:
        np.testing.assert_array_equal(got[k], a[k] if k in copied else drawn[k], err_msg=k)
    assert f"copied {len(copied)} tensors" in out and "block1.conv2" in out.split("drew")[1]


def parse_spec(arch):
    from common.arch import make_spec

    return make_spec(
        arch, in_channels=1, num_classes=10, image_size=32, width_ratio=8, scale_classifier=True, dropout=0.0
    )


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_init_from_refuses_weights_that_do_not_fit(fw, tmp_path):
    save_file({"conv.kernel": np.zeros((3, 3), np.float32)}, str(tmp_path / "other.safetensors"))
    args, b = backend(fw, "--init-from", str(tmp_path / "other.safetensors"), "--init-partial")
    with pytest.raises(WeightsError, match="no tensor of this model's names") as e:
        training._init_from(args, b, print)
    assert "\n" not in str(e.value)
    wide = {k: np.zeros(s, np.float32) for k, s in expected_canonical(parse_spec("vgg13")).items()}
    save_file(wide, str(tmp_path / "vgg13.safetensors"))
    args, b = backend(fw, "--init-from", str(tmp_path / "vgg13.safetensors"))
    with pytest.raises(WeightsError, match="weights do not fit") as e:
        training._init_from(args, b, print)
    assert "block1.conv2" in str(e.value), e.value


def test_init_partial_needs_init_from(capsys):
    from common.errors import UsageError

    with pytest.raises(UsageError, match="--init-from"):
        parse_train_args(["--init-partial"])


# ---------------------------------------------------------------------------- compare, precision, presets


def test_compare_same_init_in_bfloat16(tmp_path):
    """`common.compare --same-init --precision bfloat16`: one init.safetensors, all three start from it
    (their first losses agree to bfloat16's rounding), the report says so, the weights stay float32."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "common.compare",
            "--same-init",
            *BASE,
            "--max-steps",
            "3",
            "--precision",
            "bfloat16",
            "--optimizer",
            "sgd",
            "--lr",
            "0.01",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["same_init"] and "init.safetensors" in report["init"]
    assert "drawn once by PyTorch" in (tmp_path / "report.md").read_text()
    init = load_weights(tmp_path / "init.safetensors")[0]
    for fw in FRAMEWORKS:
        m = json.loads((tmp_path / fw / "metrics.json").read_text())
        assert m["config"]["precision"] == "bfloat16" and m["config"]["init_from"] == str(tmp_path / "init.safetensors")
        assert all(v.dtype == np.float32 for v in load_weights(tmp_path / fw / "model.safetensors")[0].values())
    # bfloat16 keeps 8 bits of mantissa: a loss of 2.3 is rounded to ~1e-2 at worst in each
    assert report["step_loss_gap"]["first"] < 0.05
    assert set(init) == set(expected_canonical(parse_spec("vgg11")))
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_paper_preset_and_flags_in_help(capsys):
    args = parse_train_args(["--preset", "paper"])
    assert (
        args.optimizer,
        args.momentum,
        args.weight_decay,
        args.dropout,
        args.lr,
        args.lr_schedule,
        args.lr_factor,
        args.batch_size,
    ) == ("sgd", 0.9, 5e-4, 0.5, 0.01, "plateau", 0.1, 256)
    assert set(PRESETS["paper"]) <= set(vars(args))
    with pytest.raises(SystemExit):
        parse_train_args(["--help"])
    out = capsys.readouterr().out
    for flag in (
        "--init-from",
        "--init-partial",
        "--weight-decay",
        "--decay-all",
        "--lr-schedule",
        "--warmup-epochs",
        "--augment",
        "--precision",
        "test set",
        "AdamW",
        "paper",
    ):
        assert flag in out, flag


def test_weight_decay_rule_by_name():
    assert recipe.decays("block1.conv1.weight") and recipe.decays("fc3.weight")
    assert not any(recipe.decays(n) for n in ("block1.conv1.bias", "block1.bn1.weight", "block1.bn1.bias", "fc1.bias"))
    assert recipe.decays("block1.bn1.bias", decay_all=True)


def test_rewrite_report_from_the_runs_in_out(tmp_path):
    """--rewrite-report trains nothing: it reads report.json and each metrics.json again, and the
    summary table gives each framework's epochs, minutes, final and best test accuracy."""
    rows = []
    for i, fw in enumerate(FRAMEWORKS):
        epochs = [
            dict(epoch=e + 1, loss=1.0, train_acc=0.5, test_acc=acc, examples=10, examples_per_sec=5.0)
            for e, acc in enumerate([0.5, 0.9 + i / 100, 0.8])
        ]
        (tmp_path / fw).mkdir()
        (tmp_path / fw / "metrics.json").write_text(
            json.dumps(
                dict(
                    epochs=epochs,
                    curve=[dict(epoch=e["epoch"], loss=1.0, train_acc=0.5) for e in epochs],
                    step_loss=[2.0, 1.5 + i * 1e-3, 1.0],
                    steps_per_epoch=1,
                    status="finished",
                )
            )
        )
        rows.append(dict(framework=fw, status="finished", seconds=120.0 * (i + 1), epochs=epochs[:1]))
    (tmp_path / "report.json").write_text(
        json.dumps(dict(flags=["--epochs=3"], init="drawn once by PyTorch", rows=rows))
    )
    compare.main(["--rewrite-report", "--out", str(tmp_path)])
    md = (tmp_path / "report.md").read_text()
    assert "| gluon | 3 | 4 | 0.8000 | 0.9100 (2) |" in md and "| flax | 3 | 6 | 0.8000 | 0.9200 (2) |" in md
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["same_init"] and report["step_loss_gap"]["all"] == pytest.approx(2e-3)
    assert (tmp_path / "report.png").stat().st_size > 10_000
