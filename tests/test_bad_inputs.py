"""Bad inputs through the real command lines, in fresh processes, as a user meets them: each ends
with exit code 2 and one `error: ...` line that names the file and says what to do (or exit code 0
and a note where the run can go on), never a traceback, and nothing already on disk is lost.

Tiny models on the bundled sample keep it fast. Cases decided in `common` (the weights file, the
data files, the flags) run through one framework each, in turn; cases where the frameworks differ
(their checkpoints, float16 weights in their models) run through all three."""

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from frameworks import lock_held, random_canonical
from safetensors.numpy import save_file

from common.arch import make_spec
from common.weights import expected_canonical, save_weights, spec_metadata

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "common" / "data"
FRAMEWORKS = ("torch", "gluon", "flax")
SPEC = make_spec("vgg11", width_ratio=8, scale_classifier=True, image_size=32)
TRAIN = [
    "--arch",
    "vgg11",
    "--width-ratio",
    "8",
    "--scale-classifier",
    "--resize",
    "32",
    "--batch-size",
    "32",
    "--max-steps",
    "1",
    "--epochs",
    "1",
    "--no-progress",
    "--device",
    "cpu",
    "--data-dir",
    str(SAMPLE),
]


def cli(module, *args, umask=None, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )


def refused(r, *words):
    """Exit code 2, no traceback, and one error line, the last one, holding every word."""
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:") or ": error:" in line]
    assert len(errors) == 1 and r.stderr.rstrip().endswith(errors[0]), r.stderr
    assert all(w in errors[0] for w in words), r.stderr
    return errors[0]


def snapshot(folder) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------- weights files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Weights files, good and bad, written once (save_weights is what every framework's save() calls)."""
    d = tmp_path_factory.mktemp("weights")
    tensors, metadata = random_canonical(SPEC, seed=1), spec_metadata(SPEC, framework="test")
    save_weights(d / "good.safetensors", tensors, metadata)
    nan = dict(tensors, **{"fc3.weight": tensors["fc3.weight"].copy()})
    nan["fc3.weight"][0, :4] = np.nan
    save_file(nan, d / "nan.safetensors", metadata=metadata)
    inf = dict(tensors, **{"block2.conv1.weight": tensors["block2.conv1.weight"].copy()})
    inf["block2.conv1.weight"][0, 0, 0, 0] = np.inf
    save_file(inf, d / "inf.safetensors", metadata=metadata)
    save_file({k: (v * 100).astype(np.int32) for k, v in tensors.items()}, d / "int.safetensors", metadata=metadata)
    save_file({k: v.astype(np.float16) for k, v in tensors.items()}, d / "f16.safetensors", metadata=metadata)
    (d / "empty.safetensors").write_bytes(b"")
    (d / "text.safetensors").write_text("these are not the weights you are looking for\n" * 4)
    vgg13 = make_spec("vgg13", width_ratio=8, scale_classifier=True, image_size=32)
    save_file(
        {k: np.zeros(s, np.float32) for k, s in expected_canonical(vgg13).items()},
        d / "other_spec.safetensors",
        metadata=metadata,
    )
    save_weights(d / "pixels.safetensors", tensors, {**metadata, "pixels": "jpeg"})
    (d / "run").mkdir()
    save_weights(d / "run" / "model.safetensors", tensors, metadata)
    (d / "empty_folder").mkdir()
    return d


# the case, its framework (in turn), the file, the words of the error
WEIGHTS_CASES = [
    ("inf", "torch", "inf.safetensors", ["block2.conv1.weight holds 1 infinite values", "must be finite"]),
    ("integers", "gluon", "int.safetensors", ["block1.conv1.weight stores int32 values", "floating point"]),
    ("empty file", "flax", "empty.safetensors", ["empty.safetensors: not a readable safetensors file"]),
    ("text file", "torch", "text.safetensors", ["text.safetensors: not a readable safetensors file"]),
    (
        "another spec",
        "gluon",
        "other_spec.safetensors",
        ["other_spec.safetensors: weights do not fit the spec in its own metadata", "block1.conv2"],
    ),
    (
        "folder with weights",
        "flax",
        "run",
        ["run is a folder, not a weights file; did you mean", "run/model.safetensors?"],
    ),
    ("folder without", "torch", "empty_folder", ["empty_folder is a folder", "it holds no model.safetensors"]),
    ("missing", "gluon", "missing.safetensors", ["missing.safetensors: no such file"]),
    ("unknown pixels", "flax", "pixels.safetensors", ["its metadata names pixels 'jpeg', not one of float, d2l"]),
]


@pytest.mark.parametrize("case,fw,name,words", WEIGHTS_CASES, ids=[c[0] for c in WEIGHTS_CASES])
def test_evaluate_refuses_bad_weights(files, case, fw, name, words):
    before = snapshot(files)
    refused(cli(f"vgg_{fw}.evaluate", "--weights", files / name, "--data-dir", SAMPLE), *words)
    assert snapshot(files) == before


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_evaluate_refuses_nan_weights(files, fw):
    """Before: test accuracy 0.1000 and exit code 0, in every framework."""
    error = refused(
        cli(f"vgg_{fw}.evaluate", "--weights", files / "nan.safetensors", "--data-dir", SAMPLE),
        "nan.safetensors: fc3.weight holds 4 NaN values (of 5,120)",
        "must be finite",
    )
    assert "test accuracy" not in error


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_evaluate_widens_float16_with_a_note(files, fw):
    """float16 weights run, with a note, and give the accuracy of their float32 values."""
    r = cli(f"vgg_{fw}.evaluate", "--weights", files / "f16.safetensors", "--data-dir", SAMPLE)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert (
        f"note: {files / 'f16.safetensors'} stores float16 (block1.conv1.weight and 21 more); widened to float32"
        in r.stderr.splitlines()
    )
    assert "test accuracy" in r.stdout


# ---------------------------------------------------------------------------- data files and flags


def test_labels_file_with_the_images_magic(tmp_path):
    import gzip

    data = tmp_path / "data"
    shutil.copytree(SAMPLE, data)
    labels = data / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(labels.read_bytes())
    labels.write_bytes(gzip.compress((2051).to_bytes(4, "big") + raw[4:]))
    before = snapshot(data)
    refused(
        cli("vgg_flax.evaluate", "--weights", ROOT / "README.md", "--data-dir", data),
        "README.md: not a readable safetensors file",
    )  # the weights are read first
    # and with good weights, the labels file: before, "dimensions (1000, 16843016, ...) are wrong"
    good = tmp_path / "w.safetensors"
    save_weights(good, random_canonical(SPEC), spec_metadata(SPEC))
    refused(
        cli("vgg_torch.evaluate", "--weights", good, "--data-dir", data),
        "t10k-labels-idx1-ubyte.gz: holds images (magic number 2051) where labels (magic 2049) were expected",
    )
    assert snapshot(data) == before


def test_data_dir_that_is_a_file(tmp_path):
    good = tmp_path / "w.safetensors"
    save_weights(good, random_canonical(SPEC), spec_metadata(SPEC))
    refused(cli("vgg_gluon.evaluate", "--weights", good, "--data-dir", good), "w.safetensors is a file, not a folder")


@pytest.mark.parametrize(
    "module,argv,words",
    [
        # before: argparse's "invalid parse_arch value", without the project's explanation
        (
            "vgg_torch.train",
            ["--arch", "((1,64),(1,128)"],
            ["argument --arch: --arch '((1,64),(1,128)' is not a valid tuple"],
        ),
        ("vgg_gluon.model", ["--image-size", "100000"], ["GiB of float32 weights, more than this machine's"]),
        ("vgg_flax.model", ["--arch", "[]"], ["architecture is empty"]),
    ],
    ids=["arch-literal", "huge-model", "empty-arch"],
)
def test_bad_model_flags(tmp_path, module, argv, words):
    refused(cli(module, *argv, *(["--out", tmp_path / "never"] if module.endswith("train") else [])), *words)
    assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------------------- checkpoints on --resume


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One finished one-step run per framework, trained under umask 027."""
    base = tmp_path_factory.mktemp("runs")
    for fw in FRAMEWORKS:
        r = cli(f"vgg_{fw}.train", *TRAIN, "--out", base / fw, umask=0o027)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return base


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_run_files_get_the_umask_mode(runs, fw):
    """Before: model.safetensors (and the checkpoint's safetensors files) were 0600, metrics.json 0644 (umask 022)."""
    files = [
        "model.safetensors",
        "metrics.json",
        "metrics.png",
        "checkpoint.json",
        *(str(p.relative_to(runs / fw)) for p in (runs / fw / "checkpoint-epoch1").iterdir()),
    ]
    modes = {p: os.stat(runs / fw / p).st_mode & 0o777 for p in files}
    assert modes == dict.fromkeys(modes, 0o640), {k: oct(v) for k, v in modes.items()}
    assert os.stat(runs / fw / "checkpoint-epoch1").st_mode & 0o777 == 0o750


class _RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _crafted_pickle(marker) -> bytes:
    return pickle.dumps({"optimizer": _RunsCode(marker), "epoch": 1}, protocol=2)  # torch.save's protocol


def _torch_zip_pickle(path, marker):
    """torch.save's zip layout around a crafted pickle (torch.load reads data.pkl inside it)."""
    import torch

    torch.save({"epoch": 1}, path)
    import zipfile

    with zipfile.ZipFile(path) as z:
        names = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(path, "w") as z:
        for n, b in names.items():
            z.writestr(n, _crafted_pickle(marker) if n.endswith("data.pkl") else b)


# framework, file in checkpoint-epoch1, how it is spoilt, the words of the error
CHECKPOINT_CASES = [
    (
        "torch",
        "state.pt",
        "code",
        [
            "state.pt is not a checkpoint this project wrote",
            "refers to posix.system",
            "could run code",
            "another --out",
        ],
    ),
    (
        "gluon",
        "trainer.states",
        "code",
        ["trainer.states is not a checkpoint this project wrote", "refers to posix.system", "could run code"],
    ),
    (
        "gluon",
        "model.params",
        "garbage",
        ["model.params is not a checkpoint this project wrote, or it is damaged", "Invalid NDArray file format"],
    ),
    (
        "flax",
        "state.safetensors",
        "foreign",
        [
            "state.safetensors is not a checkpoint this project wrote for this model",
            "it has no model/block1/conv1/bias",
        ],
    ),
]


@pytest.mark.parametrize("fw,name,how,words", CHECKPOINT_CASES, ids=[f"{c[0]}-{c[1]}" for c in CHECKPOINT_CASES])
def test_resume_refuses_a_checkpoint_it_did_not_write(runs, tmp_path, fw, name, how, words):
    out, marker = tmp_path / fw, tmp_path / "code-ran"
    shutil.copytree(runs / fw, out)
    target = out / "checkpoint-epoch1" / name
    if how == "code":
        _torch_zip_pickle(target, marker) if fw == "torch" else target.write_bytes(_crafted_pickle(marker))
    elif how == "garbage":
        target.write_bytes(b"\x00not a checkpoint\n" * 8)
    else:
        shutil.copy(out / "model.safetensors", target)  # a real safetensors file, but not this checkpoint
    before = snapshot(out)
    r = cli(f"vgg_{fw}.train", *TRAIN, "--epochs", "2", "--resume", "--out", out)
    error = refused(r, "--resume:", *words)
    assert "weights_only" not in r.stderr and "allow_missing" not in error
    assert not marker.exists(), "the crafted checkpoint ran code"
    assert snapshot(out) == before


# ---------------------------------------------------------------------------- inputs checked before work


def _idx(kind: str, n: int) -> bytes:
    """An IDX file of n Fashion-MNIST images (28x28) or labels, all zero."""
    import gzip

    dims = [n, 28, 28] if kind == "images" else [n]
    header = (2051 if kind == "images" else 2049).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return gzip.compress(header + bytes(int(np.prod(dims))))


@pytest.mark.parametrize(
    "fw,argv,words",
    [
        ("gluon", ["--seed", "-1"], ["--seed must lie in 0 to 4294967295"]),
        ("flax", ["--seed", str(2**32)], ["--seed must lie in 0 to 4294967295"]),
        ("torch", ["--data-dir", ""], ['--data-dir "" names no folder']),
    ],
    ids=["negative-seed", "seed-2**32", "empty-data-dir"],
)
def test_train_flags_refused_before_work(tmp_path, fw, argv, words):
    """Before: a negative seed ended in NumPy's traceback (or ran), 2**32 ran where MXNet wraps it,
    and --data-dir "" was taken as no flag at all."""
    refused(cli(f"vgg_{fw}.train", *TRAIN, *argv, "--out", tmp_path / "never"), *words)
    assert not (tmp_path / "never").exists()


def test_compare_seeds_out_of_range_refused_before_work(tmp_path):
    """--seeds is checked as --seed is, up front (before: a bad seed was refused only when its turn
    came, after the seeds before it had trained)."""
    refused(cli("common.compare", *TRAIN, "--seeds", "0", str(2**32), "--out", tmp_path / "never"), "4294967295")
    assert not (tmp_path / "never").exists()


def test_an_empty_data_set_is_refused(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(SAMPLE, data)
    (data / "t10k-images-idx3-ubyte.gz").write_bytes(_idx("images", 0))
    (data / "t10k-labels-idx1-ubyte.gz").write_bytes(_idx("labels", 0))
    refused(
        cli("vgg_torch.train", *TRAIN, "--data-dir", data, "--out", tmp_path / "run"),
        "t10k-images-idx3-ubyte.gz holds no images: the t10k set is empty",
    )


def test_a_fifo_is_refused_not_read_forever(tmp_path):
    """Before: reading a FIFO given as a data file or as weights waited forever."""
    data = tmp_path / "data"
    shutil.copytree(SAMPLE, data)
    (data / "t10k-labels-idx1-ubyte.gz").unlink()
    os.mkfifo(data / "t10k-labels-idx1-ubyte.gz")
    os.mkfifo(tmp_path / "w.safetensors")
    good = tmp_path / "good.safetensors"
    save_weights(good, random_canonical(SPEC), spec_metadata(SPEC))
    refused(
        cli("vgg_gluon.evaluate", "--weights", good, "--data-dir", data, timeout=120),
        "t10k-labels-idx1-ubyte.gz is not a regular file",
    )
    refused(
        cli("vgg_torch.evaluate", "--weights", tmp_path / "w.safetensors", timeout=120),
        "w.safetensors is not a regular file",
    )


def test_weights_asking_for_an_absurd_image_size(tmp_path):
    """Twenty 1-channel blocks pool 2**20 px down to 1: a small file whose first block's output
    alone is 4 TiB per image (before: the framework tried to allocate it)."""
    from common.arch import Block, VGGSpec

    spec = VGGSpec(
        name="absurd", blocks=tuple(Block(1, (3,)) for _ in range(20)), image_size=(2**20, 2**20), hidden_units=8
    )
    path = tmp_path / "absurd.safetensors"
    save_weights(path, random_canonical(spec), spec_metadata(spec))
    refused(
        cli("vgg_flax.evaluate", "--weights", path, "--data-dir", SAMPLE),
        "its metadata asks for 1048576x1048576 px images",
        "more than this machine's",
    )


def test_resume_refuses_a_metrics_json_of_the_wrong_structure(runs, tmp_path):
    """Before: a TypeError traceback."""
    out = tmp_path / "run"
    shutil.copytree(runs / "torch", out)
    (out / "metrics.json").write_text('{"framework": "torch", "config": 5, "epochs": {}}')
    before = snapshot(out)
    refused(
        cli("vgg_torch.train", *TRAIN, "--epochs", "2", "--resume", "--out", out),
        "metrics.json is damaged",
        "not the structure this project writes",
    )
    assert snapshot(out) == before


def test_profile_refuses_a_non_finite_timeout_and_an_out_it_cannot_write(tmp_path):
    """Before: --timeout nan was taken, and a read-only --out was found only at the final write,
    after the measurements, with a traceback."""
    refused(
        cli("common.profile", "--arithmetic-only", "--timeout", "nan"), "--timeout must be a positive finite number"
    )
    refused(
        cli("common.profile", "--arithmetic-only", "--out", "/proc/self/profile.json"),
        "--out: cannot write in /proc/self",
    )


@pytest.mark.parametrize(
    "module, args",
    [
        ("benchmarks.throughput", ["--sizes", "32", "--frameworks", "vgg_torch"]),
        ("benchmarks.loader", []),
        ("benchmarks.equivalence", []),
        ("benchmarks.cpu_time", []),
    ],
)
def test_benchmarks_refuse_an_out_they_cannot_write_before_measuring(module, args):
    """Before: each measured for minutes, then ended in a traceback at its final write."""
    r = cli(module, *args, "--out", "/proc/self/result.json", timeout=120)
    refused(r, "--out: cannot write in /proc/self")
    assert "px" not in r.stdout and "images/s" not in r.stdout, r.stdout  # nothing was measured


def test_ratios_refuse_a_plot_they_cannot_write(tmp_path):
    result = ROOT / "benchmarks" / "results" / "throughput_float32_2026-12-06_all.json"
    refused(
        cli("benchmarks.ratios", result, result, "--plot", "/proc/self/r.png"), "--plot: cannot write in /proc/self"
    )
    refused(cli("benchmarks.ratios", result, result, "--out", tmp_path), f"--out {tmp_path} is a folder")


# ---------------------------------------------------------------------------- common.compare, refused up front


def test_compare_refusals(tmp_path):
    """Each one line and exit code 2, before any framework runs (before: tracebacks for the file and
    the damaged report, and the duplicate and the empty --resume started training)."""
    (tmp_path / "f").write_text("kept")
    refused(cli("common.compare", "--out", tmp_path / "f"), "is a file, not a folder")
    refused(cli("common.compare", "--out", "/proc/vgg-compare"), "cannot make this folder")
    refused(cli("common.compare", "--frameworks", "torch,torch", "--out", tmp_path / "a"), "names torch twice")
    refused(cli("common.compare", "--resume", "--out", tmp_path / "b"), "holds no run to continue")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    report = tmp_path / "r"
    report.mkdir()
    (report / "report.json").write_text('{"flags": [], "rows": 5}')
    refused(cli("common.compare", "--rewrite-report", "--out", report), "report.json is damaged")
    assert (tmp_path / "f").read_text() == "kept"


def test_compare_refuses_a_folder_with_an_earlier_run(runs, tmp_path):
    """<out>/torch holds a run: refused without --overwrite or --resume, and nothing is touched
    (before: it was replaced without a word)."""
    out = tmp_path / "cmp"
    shutil.copytree(runs / "torch", out / "torch")
    before = snapshot(out)
    refused(cli("common.compare", *TRAIN, "--out", out), "torch already holds a run", "--overwrite replaces it")
    assert snapshot(out) == before


def test_compare_refuses_a_busy_folder_at_once(tmp_path):
    """A second comparison on a folder another one holds is refused, naming its process (before: it
    ran, and replaced the first one's init.safetensors)."""
    out = tmp_path / "cmp"
    out.mkdir()
    with lock_held(out / ".lock") as holder:
        refused(cli("common.compare", *TRAIN, "--out", out), f"in use by another comparison (process {holder.pid})")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_resume_refuses_integer_weights_in_a_checkpoint(tmp_path):
    """A checkpoint's safetensors file with an integer weight tensor (a framework would convert it on
    loading without a word) is refused by name, so --resume tries the checkpoint before."""
    from common.errors import CheckpointError
    from common.runfiles import check_stored_floats

    folder = tmp_path / "checkpoint-epoch2"
    folder.mkdir()
    tensors = random_canonical(SPEC)
    save_file({**tensors, "fc3.weight": tensors["fc3.weight"].astype(np.int32)}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors: fc3.weight stores I32 values"):
        check_stored_floats(folder)
    save_file(
        {"model/block1/conv1/kernel": np.zeros(3, np.float32), "optimizer/step": np.zeros(1, np.uint32)},
        folder / "model.safetensors",
    )
    check_stored_floats(folder)  # counters and RNG keys are integers by nature
