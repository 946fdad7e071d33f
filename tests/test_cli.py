"""Training flags: defaults, presets, and clear errors (exit code 2, one line, no traceback)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import FRAMEWORKS
from common.cli import PRESETS, main_guard, parse_train_args, preset_flags

ROOT = Path(__file__).resolve().parents[1]


def error_of(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e, main_guard():  # the library raises UsageError; the command line's edge says it
        parse_train_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_defaults_are_the_d2l_recipe():
    a = parse_train_args([])
    assert (a.arch, a.width_ratio, a.resize, a.epochs, a.batch_size, a.lr, a.optimizer, a.momentum, a.init) == (
        "vgg11",
        4,
        224,
        10,
        128,
        0.05,
        "sgd",
        0.0,
        "xavier",
    )  # d2l.train_ch6 with ratio = 4
    assert not a.normalize and not a.scale_classifier and a.dropout == 0.5 and a.device == "auto"


def test_preset_sets_defaults_and_flags_still_win():
    a = parse_train_args(["--preset", "cpu", "--lr", "0.5", "--epochs", "3"])
    assert (a.lr, a.epochs) == (0.5, 3)
    assert all(getattr(a, k) == v for k, v in PRESETS["cpu"].items() if k not in ("lr", "epochs"))
    # flags before --preset win too: the preset only changes defaults
    assert parse_train_args(["--resize", "64", "--preset", "cpu"]).resize == 64


def test_preset_is_the_flags_it_prints():
    """--help shows a preset as flags; those flags give exactly the preset's configuration."""
    by_name, by_flags = vars(parse_train_args(["--preset", "cpu"])), vars(parse_train_args(preset_flags("cpu").split()))
    by_name.pop("preset"), by_flags.pop("preset")
    assert by_name == by_flags


@pytest.mark.parametrize(
    "argv,says",
    [
        (["--lr", "-1"], "--lr must be a positive"),
        (["--lr", "nan"], "--lr must be a positive"),
        (["--lr", "inf"], "--lr must be a positive"),
        (["--lr", "fast"], "--lr must be a number"),
        (["--epochs", "0"], "--epochs must be a positive"),
        (["--batch-size", "2.5"], "--batch-size must be an integer"),
        (["--max-steps", "-3"], "--max-steps must be a positive"),
        (["--momentum", "1.5"], "--momentum must lie in [0, 1)"),
        (["--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
        (["--init", "he"], "invalid choice: 'he'"),
        (["--preset", "gpu"], "invalid choice: 'gpu'"),
        (["--arch", "vgg12"], "unknown architecture 'vgg12'"),
        (["--resize", "16"], "the smallest size that works is 32"),
        (["--width-ratio", "1000"], "the largest ratio that works is 64"),
        (["--optimizer", "adam", "--momentum", "0.9"], "--momentum applies to --optimizer sgd only"),
        (["--in-channels", "3"], "Fashion-MNIST has 1 channel and 10 classes"),
        (["--dropout", "1.0"], "dropout must lie in [0, 1)"),
    ],
)
def test_bad_flags_and_combinations(capsys, argv, says):
    assert says in error_of(capsys, argv)


def test_high_lr_warns_but_runs(capsys):
    assert parse_train_args(["--lr", "5"]).lr == 5.0
    assert "unusually high" in capsys.readouterr().err


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_train_script_rejects_bad_flag_and_missing_gpu(fw, tmp_path):
    """Through the real entry point, in a fresh process: exit code 2, a one-line error, no traceback.
    The GPU is hidden, so `--device gpu` fails the same way on a machine that has one."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    run = lambda *a: subprocess.run(
        [sys.executable, "-m", f"vgg_{fw}.train", *a], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    bad = run("--lr", "-1")
    assert bad.returncode == 2 and "--lr must be a positive" in bad.stderr and "Traceback" not in bad.stderr
    gpu = run("--device", "gpu", "--data-dir", str(ROOT / "common" / "data"), "--resize", "32", "--out", str(tmp_path))
    assert gpu.returncode == 2, gpu.stderr
    assert "--device gpu: no GPU is visible" in gpu.stderr and "Traceback" not in gpu.stderr


def test_resume_refuses_missing_or_different_runs(tmp_path):
    """The library raises (typed, with the message); the command line turns it into exit code 2."""
    from common import training
    from common.contract import TrainConfig
    from common.errors import CheckpointError, DataError

    class Never:  # the checks come before any framework work
        framework = "torch"

        def __init__(self, args):
            raise AssertionError("built a backend")

    config = lambda *a: TrainConfig.from_args(
        parse_train_args(["--data-dir", str(ROOT / "common" / "data"), "--out", str(tmp_path), *a])
    )
    with pytest.raises(CheckpointError, match="--resume: no checkpoint in") as e:
        training.run(config("--resume"), Never)
    assert e.value.code == 2
    (tmp_path / "checkpoint.json").write_text(json.dumps({"epoch": 1, "folder": "checkpoint-epoch1"}))
    (tmp_path / "metrics.json").write_text(
        json.dumps({"framework": "torch", "config": config().as_dict(), "epochs": [], "curve": []})
    )
    with pytest.raises(CheckpointError, match="--lr 0.05 -> 0.1"):
        training.run(config("--resume", "--lr", "0.1"), Never)
    with pytest.raises(DataError, match="missing"):
        training.run(config("--resume", "--data-dir", str(tmp_path / "nowhere")), Never)


def test_train_config_is_every_training_flag():
    """TrainConfig (what training.run takes) has a field for each flag, and metrics.json's "config"
    is the parsed flags as they were always written (vars of the argparse Namespace)."""
    from common.contract import TrainConfig

    args = parse_train_args(["--arch", "((1,8),(1,16),(1,16),(1,16),(1,16))", "--resize", "32"])
    config = TrainConfig.from_args(args)
    flags = {k: v for k, v in vars(args).items() if k != "spec"}  # the model the flags describe is no flag
    assert config.as_dict() == json.loads(json.dumps(flags, default=list))
    # made once, when the flags were parsed: d2l's width ratio 4 of the default, at 32 px
    assert [b.out_channels for b in config.spec.blocks] == [2, 4, 4, 4, 4] and config.spec.image_size == (32, 32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0


def test_resume_and_overwrite_exclude_each_other(capsys):
    assert "give one or the other" in error_of(capsys, ["--resume", "--overwrite"])
