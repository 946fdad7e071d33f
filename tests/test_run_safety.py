"""A run never loses what is on disk and never ends in a traceback: two runs on one --out, a fresh
run over another run's checkpoint, damaged checkpoints, Ctrl-C, an --out that cannot be used.
Each case goes through the real command line (`python -m vgg_X.train` in a subprocess) and is
held to: the exit code, no traceback, the words of the one-line message, and the files that were
there before (compared byte for byte, or tensor for tensor with safetensors' own reader).

One small run per framework (VGG-11/8 at 32 px, 2 epochs of 2 steps, the bundled sample) is shared
by the cases; each case works on a copy of it."""

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from frameworks import SMALL_RUN, lock_held
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "common" / "data"
FLAGS = [*SMALL_RUN, "--lr", "0.01"]
FRAMEWORKS = ["torch", "gluon", "flax"]


def _sigint_default():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell's background job inherits it ignored


def start(fw, out, *flags, preexec_fn=_sigint_default, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(
        [sys.executable, "-m", f"vgg_{fw}.train", *FLAGS, *flags, "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
        **kw,
    )


def ended(p, timeout=600) -> subprocess.CompletedProcess:
    stdout, stderr = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)


def train(fw, out, *flags):
    return ended(start(fw, out, *flags))


def signal_after_epoch_1(p, sig) -> None:
    """Send sig to a two-epoch run soon after its first epoch's line: during epoch 1's checkpoint or
    epoch 2's steps."""
    for line in p.stdout:
        if line.startswith("epoch 1/2:"):
            break
    time.sleep(0.5)
    p.send_signal(sig)


def refused(r, code=2):
    """Exit code, exactly one line on stderr, no traceback; returns that line."""
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def snapshot(folder: Path) -> dict:
    """Every file under `folder` (its lock file aside) and its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def tensors(path: Path) -> dict:
    return load_file(str(path))


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys() and len(ta) >= 16
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and np.array_equal(ta[k], tb[k]), k  # bit for bit


@pytest.fixture(scope="module", params=FRAMEWORKS)
def done(request, tmp_path_factory):
    """(framework, a finished 2-epoch run's folder)."""
    fw = request.param
    out = tmp_path_factory.mktemp(fw) / "run"
    r = train(fw, out, "--epochs", "2", "--max-steps", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    return fw, out


def copy(done, tmp_path) -> Path:
    shutil.copytree(done[1], tmp_path / "run")
    return tmp_path / "run"


# ---------------------------------------------------------------------------- two runs, one folder


def test_a_finished_run_keeps_its_folder_and_lock_file_goes(done):
    fw, out = done
    assert sorted(p.name for p in out.iterdir()) == [
        ".vgg-run.json",  # the manifest: the folder is this project's
        "checkpoint-epoch1",
        "checkpoint-epoch2",
        "checkpoint.json",
        "metrics.json",
        "metrics.png",
        "model.safetensors",
    ]


def test_fresh_run_refuses_to_replace_another_runs_checkpoint(done, tmp_path):
    fw, _ = done
    out = copy(done, tmp_path)
    before = snapshot(out)
    line = refused(train(fw, out, "--epochs", "1", "--seed", "1"))
    assert "already holds a run" in line and "--resume continues it" in line and "--overwrite replaces it" in line
    assert snapshot(out) == before


def test_second_run_refused_while_the_folder_is_locked(done, tmp_path):
    """Another process holds the folder's lock (as a running run does): this run names its process id
    and leaves everything as it was; once that process is killed, the lock is gone with it."""
    fw, _ = done
    out = copy(done, tmp_path)
    with lock_held(out / ".lock") as holder:
        before = snapshot(out)
        line = refused(train(fw, out, "--epochs", "2", "--max-steps", "2", "--resume"))
        assert f"in use by another run (process {holder.pid})" in line and "another --out" in line
        assert snapshot(out) == before
    # the holder was killed: its lock went with it, though its lock file is still there
    fd = os.open(out / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- damaged checkpoints


def test_resume_falls_back_when_the_last_checkpoint_is_gone(done, tmp_path):
    """checkpoint.json truncated and the last checkpoint folder deleted: --resume says so, continues
    from the epoch before, and ends with the uninterrupted run's weights, bit for bit."""
    fw, full = done
    out = copy(done, tmp_path)
    shutil.rmtree(out / "checkpoint-epoch2")
    (out / "checkpoint.json").write_text((out / "checkpoint.json").read_text()[:10])
    (out / "model.safetensors").unlink()
    r = train(fw, out, "--epochs", "2", "--max-steps", "2", "--resume")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "checkpoint.json is damaged" in r.stderr and "resumed from" in r.stdout and "after epoch 1" in r.stdout
    assert_same_tensors(full / "model.safetensors", out / "model.safetensors")


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_resume_refuses_an_unreadable_checkpoint(done, tmp_path, damage):
    """Every checkpoint damaged (the largest file of each cut in half, or the folders deleted):
    one line that says which and what to do; the files stay as they were."""
    fw, _ = done
    out = copy(done, tmp_path)
    for folder in ("checkpoint-epoch1", "checkpoint-epoch2"):
        if damage == "deleted":
            shutil.rmtree(out / folder)
            continue
        big = max((out / folder).iterdir(), key=lambda p: p.stat().st_size)
        big.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    before = snapshot(out)
    line = refused(train(fw, out, "--epochs", "2", "--max-steps", "2", "--resume"))
    assert "cannot be read" in line and "checkpoint-epoch2" in line and "--overwrite starts afresh" in line
    # the advice said once, not once per checkpoint (before: three times, in 550-650 characters)
    assert line.count("--out") == 1 and line.count("starts afresh") == 1 and line.count(str(out)) == 1, line
    assert snapshot(out) == before


# ---------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_stops_with_one_line_and_keeps_the_checkpoint(done, tmp_path):
    """SIGINT soon after the first epoch's line (during its checkpoint or the next epoch's steps):
    exit code 130, where it stopped, metrics.json says 'interrupted', epoch 1's checkpoint whole."""
    fw, _ = done
    out = tmp_path / "run"
    p = start(fw, out, "--epochs", "2", "--max-steps", "40")
    signal_after_epoch_1(p, signal.SIGINT)
    line = refused(ended(p, 120), code=130)
    assert "interrupted during" in line and "the last checkpoint (epoch 1) is intact; --resume continues" in line
    import json

    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "interrupted" and m["message"].startswith("interrupted during") and len(m["epochs"]) >= 1
    assert json.loads((out / "checkpoint.json").read_text())["epoch"] == 1
    assert not list(out.glob(".checkpoint-*")) and not (out / ".lock").exists()


# ---------------------------------------------------------------------------- an unusable --out


@pytest.mark.parametrize(
    "fw,where,says",
    [
        ("torch", "a file", "is a file, not a folder"),
        ("gluon", "/proc/vgg-run", "cannot make this folder"),
        ("flax", "/sys/vgg-run", "cannot make this folder"),
        ("torch", "under a file", "cannot make this folder (Not a directory"),
    ],
)
def test_unusable_out_is_refused_before_any_work(fw, where, says, tmp_path):
    (tmp_path / "f").write_text("kept")
    out = {"a file": tmp_path / "f", "under a file": tmp_path / "f" / "run"}.get(where, where)
    line = refused(train(fw, out, "--epochs", "1", "--max-steps", "2"))
    assert f"--out {out}" in line and says in line
    assert (tmp_path / "f").read_text() == "kept"


def test_read_only_out_is_refused(tmp_path, monkeypatch):
    """A read-only file system (statvfs's ST_RDONLY; as root, /proc and /sys are the read-only
    places a test can reach, and they refuse at mkdir): the check's own branch."""
    from common.errors import RunError
    from common.runfolder import check_out

    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda p: type("V", (), {"f_flag": real(p).f_flag | os.ST_RDONLY})())
    with pytest.raises(RunError, match="is on a read-only file system"):
        check_out(tmp_path)


# ---------------------------------------------------------------------------- SIGKILL, then --resume


@pytest.mark.slow
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_killed_runs_resume_to_the_same_weights(fw, tmp_path):
    """Two SIGKILLs (one at a random moment, one in the middle of a checkpoint's
    temp folder); each run resumed ends with the uninterrupted run's model.safetensors, bit for bit.
    The long version: python -m benchmarks.kill_resume --tries 10."""
    from benchmarks import kill_resume

    report = kill_resume.run([fw], tries=2, steps=4, folder=tmp_path, log=lambda *a: None)
    rows = report["frameworks"][fw]["tries"]
    assert all(r["ok"] for r in rows), rows


# ---------------------------------------------------------------------------- a folder it did not make


def users_folder(tmp_path) -> Path:
    """A user's folder: their own metrics.json, a .part file and a .checkpoint-* folder of their own."""
    user = tmp_path / "mine"
    (user / ".checkpoint-notes").mkdir(parents=True)
    (user / ".checkpoint-notes" / "n.txt").write_text("mine")
    (user / "metrics.json").write_text('{"mine": true}')
    (user / ".draft.part").write_text("mine")
    return user


def test_a_users_folder_is_refused_through_a_symlink_and_left_as_it_was(tmp_path):
    """Before: the run wrote its metrics.json over the user's and deleted their .part file and
    .checkpoint-* folder."""
    user = users_folder(tmp_path)
    (tmp_path / "link").symlink_to(user)
    before = snapshot(user)
    line = refused(train("torch", tmp_path / "link", "--epochs", "1", "--max-steps", "2"))
    assert "is not empty and holds no run of this project" in line and "nothing there is touched" in line
    assert snapshot(user) == before and sorted(p.name for p in user.iterdir()) == sorted(before_names(before))


def before_names(snap):
    return {k.split("/")[0] for k in snap}


@pytest.mark.parametrize("done", ["gluon"], indirect=True)  # one framework: the clean-up is common.runfolder's
def test_clean_up_removes_only_the_projects_own_temporary_names(done, tmp_path):
    """In a run's folder, a killed run's temporary names (ending .vgg-tmp) go; a user's .part file and
    .checkpoint-* folder put there stay (before: both were deleted)."""
    fw, _ = done
    out = copy(done, tmp_path)
    (out / ".checkpoint-mine").mkdir()
    (out / ".checkpoint-mine" / "keep.txt").write_text("mine")
    (out / ".notes.part").write_text("mine")
    (out / ".checkpoint-k1l2.vgg-tmp").mkdir()
    (out / ".metrics.json.k1l2.vgg-tmp").write_text("half")
    r = train(fw, out, "--epochs", "2", "--max-steps", "2", "--resume")  # nothing to do: two epochs are there
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert (out / ".checkpoint-mine" / "keep.txt").read_text() == "mine" and (out / ".notes.part").exists()
    assert not (out / ".checkpoint-k1l2.vgg-tmp").exists() and not (out / ".metrics.json.k1l2.vgg-tmp").exists()


@pytest.mark.parametrize("done", ["flax"], indirect=True)  # one framework: the run folder is common.runfiles'
def test_overwrite_keeps_the_earlier_run_until_the_first_checkpoint(done, tmp_path):
    """--overwrite, then Ctrl-C before the new run's first checkpoint: the earlier run's metrics.json
    and checkpoint are as they were, and --resume could continue it (before: metrics.json was
    replaced by the new run's 'interrupted' one)."""
    fw, _ = done
    out = copy(done, tmp_path)
    before = snapshot(out)
    p = start(fw, out, "--epochs", "1", "--max-steps", "100", "--overwrite", "--seed", "3")
    for line in p.stdout:
        if line.startswith("Fashion-MNIST"):  # the header: start-up is done, training begins
            break
    time.sleep(1)
    p.send_signal(signal.SIGINT)
    line = refused(ended(p, 120), code=130)
    assert "the earlier run in" in line and "is kept as it was" in line, line
    assert snapshot(out) == before


# ---------------------------------------------------------------------------- I/O failures


@pytest.mark.parametrize("done", ["torch"], indirect=True)  # one framework: the run's writes are common.runfiles'
def test_a_full_disk_is_one_line_and_the_last_checkpoint_stays(done, tmp_path):
    """A file-size limit (RLIMIT_FSIZE, as a full disk) stops the third epoch's checkpoint: one line
    naming it and the cause, metrics.json 'failed', checkpoint.json still at epoch 2 and both
    checkpoints as they were (before: SIGXFSZ killed the process, no message)."""
    import json
    import resource

    fw, _ = done
    out = copy(done, tmp_path)
    before = {k: v for k, v in snapshot(out).items() if k.startswith("checkpoint")}

    def limited():
        _sigint_default()
        resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000))  # metrics.json fits, weights do not

    p = start(fw, out, "--epochs", "3", "--max-steps", "2", "--resume", preexec_fn=limited)
    r = ended(p, 600)
    line = refused(r)
    assert f"cannot write {out}/checkpoint-epoch3" in line and "File too large" in line, line
    assert "the last checkpoint (epoch 2) is intact; --resume continues" in line
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "failed" and "File too large" in m["message"]
    assert {k: v for k, v in snapshot(out).items() if k.startswith("checkpoint")} == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".vgg-tmp")]


@pytest.mark.parametrize("done", ["gluon"], indirect=True)  # one framework: the run's writes are common.runfiles'
def test_out_deleted_during_the_run_is_one_line(done, tmp_path):
    fw, _ = done
    out = tmp_path / "run"
    p = start(fw, out, "--epochs", "3", "--max-steps", "30")
    for line in p.stdout:
        if line.startswith("epoch 1/3:"):
            break
    while out.exists():
        shutil.rmtree(out, ignore_errors=True)
    r = ended(p, 600)
    line = refused(r)
    assert "cannot write" in line and "No such file or directory" in line and "was removed while the run" in line


def test_a_path_too_long_is_refused_before_any_work(tmp_path):
    """An --out so long that the files inside it would pass the file system's path limit (before: the
    run trained and then failed with a traceback at its first write)."""
    out = tmp_path
    while len(str(out)) < 4096 - 60:
        out = out / ("d" * 200)
    line = refused(train("flax", out, "--epochs", "1", "--max-steps", "2"))
    assert "give a shorter --out" in line and "limit of 4,096 bytes" in line


# ---------------------------------------------------------------------------- signals


@pytest.mark.parametrize("done", ["torch"], indirect=True)  # one framework: the signals are common.signals'
def test_sigterm_stops_like_ctrl_c(done, tmp_path):
    """Before: SIGTERM ended the process with no message and no metrics.json."""
    import json

    fw, _ = done
    out = tmp_path / "run"
    p = start(fw, out, "--epochs", "2", "--max-steps", "40")
    signal_after_epoch_1(p, signal.SIGTERM)
    line = refused(ended(p, 120), code=143)
    assert "terminated (SIGTERM) during" in line and "the last checkpoint (epoch 1) is intact" in line
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "interrupted" and json.loads((out / "checkpoint.json").read_text())["epoch"] == 1


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_ctrl_c_while_the_framework_imports_is_one_line(fw, tmp_path):
    """Before: a KeyboardInterrupt traceback from inside the framework's import."""
    p = start(fw, tmp_path / "run", "--epochs", "1")
    time.sleep(0.8)
    p.send_signal(signal.SIGINT)
    line = refused(ended(p, 120), code=130)
    assert line.startswith("error: interrupted during start-up")


def test_a_busy_folder_is_refused_before_the_data_is_read(tmp_path):
    """The lock comes first: with a missing --data-dir, the busy folder is what is said (before: the
    data error, after the data was looked for; with good data, 7 s later, after the model was built)."""
    out = tmp_path / "run"
    out.mkdir()
    with lock_held(out / ".lock") as holder:
        line = refused(train("torch", out, "--epochs", "1", "--data-dir", str(tmp_path / "no-data")))
        assert f"in use by another run (process {holder.pid})" in line


@pytest.mark.parametrize(
    "done", ["torch"], indirect=True
)  # one framework: the check is common.runfiles', on the loaded canonical weights
def test_resume_refuses_non_finite_weights_by_name_and_falls_back(done, tmp_path):
    """NaN in the last checkpoint's weights: --resume names the tensor and continues from the epoch
    before (before: it resumed from the NaN weights without a word)."""
    from safetensors.numpy import save_file

    fw, _ = done
    out = copy(done, tmp_path)
    path = out / "checkpoint-epoch2" / "model.safetensors"
    t = tensors(path)
    t["fc3.weight"][0, :3] = np.nan
    save_file(t, str(path))
    r = train(fw, out, "--epochs", "2", "--max-steps", "2", "--resume")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "checkpoint-epoch2: fc3.weight holds 3 NaN or infinite values" in r.stderr
    assert "resumed from" in r.stdout and "after epoch 1" in r.stdout


# ---------------------------------------------------------------------------- common.compare and signals


def test_compare_passes_ctrl_c_to_its_child_and_reports(tmp_path):
    """Ctrl-C during the first framework: the child stops as a train script does (exit 130, its
    checkpoint kept), the report holds it marked interrupted and the next one not started, the
    comparison exits 130 in one line, and no child is left (before: a traceback, no report)."""
    import json

    out = tmp_path / "cmp"
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    p = subprocess.Popen(
        [sys.executable, "-m", "common.compare", *FLAGS, "--frameworks", "torch,gluon", "--no-same-init"]
        + ["--epochs", "2", "--max-steps", "40", "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_default,
    )
    signal_after_epoch_1(p, signal.SIGINT)
    r = ended(p, 300)
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[-1].startswith("error: interrupted during torch") and "--resume continues" in lines[-1]
    rows = {row["framework"]: row["status"] for row in json.loads((out / "report.json").read_text())["rows"]}
    assert rows == {"torch": "interrupted (exit 130)", "gluon": "not started (interrupted)"}
    assert json.loads((out / "torch" / "checkpoint.json").read_text())["epoch"] == 1
    assert json.loads((out / "torch" / "metrics.json").read_text())["status"] == "interrupted"
    alive = subprocess.run(["pgrep", "-f", f"--out={out}/"], capture_output=True, text=True).stdout.split()
    assert not alive, alive
