"""The comparison over seeds: its intervals and paired differences against arithmetic done by
hand (common.stats), its report from seed folders, and a multi-seed run that is interrupted and
run again (common.compare --seeds)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import compare, stats

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "common" / "data"

# Student's t, 97.5th percentile, from a printed table: 3 degrees of freedom (4 seeds), 2 (3 seeds)
T3, T2 = 3.182446, 4.302653

# A small fixed set of results: 4 seeds x 3 frameworks.
RESULTS = {
    "torch": {
        "test_acc": [0.860, 0.864, 0.858, 0.862],
        "loss": [0.40, 0.42, 0.41, 0.43],
        "examples_per_sec": [1000, 1100, 900, 1000],
    },
    "gluon": {
        "test_acc": [0.855, 0.860, 0.853, 0.856],
        "loss": [0.39, 0.40, 0.40, 0.41],
        "examples_per_sec": [990, 1105, 910, 985],
    },
    "flax": {
        "test_acc": [0.858, 0.866, 0.856, 0.864],
        "loss": [0.40, 0.42, 0.41, 0.43],
        "examples_per_sec": [500, 520, 480, 500],
    },
}
FRAMEWORKS = list(RESULTS)


def by_seed(results=RESULTS):
    """{seed: {framework: {metric: value}}}, as common.seeds reads the seed folders."""
    return {s: {f: {m: v[s] for m, v in results[f].items()} for f in results} for s in range(4)}


def test_interval_by_hand():
    # torch's accuracy: mean (0.860 + 0.864 + 0.858 + 0.862) / 4 = 0.861; deviations -0.001, 0.003,
    # -0.003, 0.001; squares 1e-6 + 9e-6 + 9e-6 + 1e-6 = 2e-5; sd = sqrt(2e-5 / 3) = 0.0025820;
    # half-width T3 * sd / sqrt(4) = 3.182446 * 0.0012910 = 0.0041085
    i = stats.interval(RESULTS["torch"]["test_acc"])
    assert i.n == 4 and i.mean == pytest.approx(0.861, abs=1e-12)
    assert i.sd == pytest.approx((2e-5 / 3) ** 0.5, rel=1e-9)
    half = T3 * (2e-5 / 3) ** 0.5 / 2
    assert half == pytest.approx(0.0041085, abs=1e-7)
    assert (i.low, i.high) == (pytest.approx(0.861 - half, abs=1e-6), pytest.approx(0.861 + half, abs=1e-6))
    # 3 values: 1, 2, 6: mean 3, deviations -2, -1, 3, squares 14, sd sqrt(7); half T2 * sqrt(7 / 3)
    i = stats.interval([1, 2, 6])
    assert (i.low, i.high) == (
        pytest.approx(3 - T2 * (7 / 3) ** 0.5, abs=1e-5),
        pytest.approx(3 + T2 * (7 / 3) ** 0.5, abs=1e-5),
    )
    one = stats.interval([0.5])  # one value: a mean and no interval
    assert one.mean == 0.5 and one.low != one.low and stats.interval([2, 2, 2]).low == 2  # NaN; no spread


def test_paired_differences_and_sentences_by_hand():
    s = stats.summarize(by_seed(), FRAMEWORKS)
    pair = {(p["a"], p["b"], p["metric"]): p for p in s["pairs"]}
    assert len(pair) == 3 * 3  # three pairs x three metrics

    # torch - gluon accuracy by seed: 0.005, 0.004, 0.005, 0.006; mean 0.005; squares of the
    # deviations 0 + 1e-6 + 0 + 1e-6 = 2e-6; sd sqrt(2e-6 / 3) = 0.00081650; half T3 * sd / 2 = 0.0012992
    p = pair["torch", "gluon", "test_acc"]
    half = T3 * (2e-6 / 3) ** 0.5 / 2
    assert p["mean"] == pytest.approx(0.005, abs=1e-12) and p["n"] == 4
    assert (p["low"], p["high"]) == (pytest.approx(0.005 - half, abs=1e-6), pytest.approx(0.005 + half, abs=1e-6))
    assert p["differences"] == {s: pytest.approx(d) for s, d in enumerate([0.005, 0.004, 0.005, 0.006])}
    assert p["sentence"] == "torch is ahead of gluon by 0.0050 (interval 0.0037 to 0.0063)"

    # torch - flax accuracy: 0.002, -0.002, 0.002, -0.002: mean 0, the interval holds 0
    p = pair["torch", "flax", "test_acc"]
    assert p["mean"] == pytest.approx(0, abs=1e-12) and p["low"] < 0 < p["high"]
    assert p["sentence"] == "no difference beyond seed-to-seed spread"

    # loss (lower is better), torch - gluon: 0.01, 0.02, 0.01, 0.02: mean 0.015; deviations +-0.005,
    # squares 4 x 2.5e-5 = 1e-4; sd sqrt(1e-4 / 3) = 0.0057735; half T3 * sd / 2 = 0.0091869:
    # gluon's loss is lower, by 0.015 (0.0058 to 0.0242)
    p = pair["torch", "gluon", "loss"]
    half = T3 * (1e-4 / 3) ** 0.5 / 2
    assert half == pytest.approx(0.0091869, abs=1e-7)
    assert (p["low"], p["high"]) == (pytest.approx(0.015 - half, abs=1e-6), pytest.approx(0.015 + half, abs=1e-6))
    assert p["sentence"] == "gluon is ahead of torch by 0.0150 (interval 0.0058 to 0.0242)"

    # examples/s, torch - flax: 500, 580, 420, 500: mean 500; deviations 0, 80, -80, 0, squares
    # 12800; sd sqrt(12800 / 3) = 65.320; half T3 * sd / 2 = 103.94: 396.06 to 603.94
    p = pair["torch", "flax", "examples_per_sec"]
    assert (p["low"], p["high"]) == (pytest.approx(396.06, abs=0.01), pytest.approx(603.94, abs=0.01))
    assert p["sentence"] == "torch is ahead of flax by 500.0 (interval 396.1 to 603.9)"
    # gluon - flax examples/s: 490, 585, 430, 485
    assert pair["gluon", "flax", "examples_per_sec"]["sentence"].startswith("gluon is ahead of flax by 497.5")

    # Student's t, not the normal: differences 0.002, 0.006, 0.000, 0.004: mean 0.003; deviations
    # -0.001, 0.003, -0.003, 0.001, squares 2e-5; sd sqrt(2e-5 / 3) = 0.0025820, sd / 2 = 0.0012910;
    # T3 gives 0.003 -+ 0.0041085 = -0.0011 to 0.0071, which holds 0; the normal's 1.96 would give
    # 0.00047 to 0.00553 and call a difference
    d, _ = stats.paired(dict(enumerate([0.852, 0.856, 0.850, 0.854])), dict(enumerate([0.850] * 4)))
    assert (d.low, d.high) == (pytest.approx(0.003 - 0.0041085, abs=1e-6), pytest.approx(0.003 + 0.0041085, abs=1e-6))
    assert stats.sentence("torch", "gluon", d, "test_acc") == "no difference beyond seed-to-seed spread"

    # the same paired test that SciPy's ttest_rel makes (its p-value, here for torch - gluon accuracy)
    from scipy import stats as scipy_stats

    ref = scipy_stats.ttest_rel(RESULTS["torch"]["test_acc"], RESULTS["gluon"]["test_acc"])
    assert pair["torch", "gluon", "test_acc"]["p"] == pytest.approx(ref.pvalue)

    # per framework: each seed's value kept beside the mean and interval
    torch_acc = s["frameworks"]["torch"]["test_acc"]
    assert torch_acc["values"] == dict(enumerate(RESULTS["torch"]["test_acc"]))
    assert torch_acc["mean"] == pytest.approx(0.861)


def test_a_seed_a_framework_did_not_finish_is_left_out_of_its_pairs():
    results = by_seed()
    del results[3]["flax"]  # flax failed at seed 3
    s = stats.summarize(results, FRAMEWORKS)
    assert s["frameworks"]["flax"]["test_acc"]["n"] == 3 and s["frameworks"]["torch"]["test_acc"]["n"] == 4
    p = next(p for p in s["pairs"] if (p["a"], p["b"], p["metric"]) == ("torch", "flax", "test_acc"))
    # 0.002, -0.002, 0.002 over seeds 0-2: mean 0.002/3, sd sqrt(((4/3)^2 + (8/3)^2 + (4/3)^2) * 1e-6 / 2)
    assert p["n"] == 3 and sorted(p["differences"]) == [0, 1, 2]
    sd = ((16 / 9 + 64 / 9 + 16 / 9) * 1e-6 / 2) ** 0.5
    assert p["high"] == pytest.approx(0.002 / 3 + T2 * sd / 3**0.5, abs=1e-6)
    one = stats.summarize({0: by_seed()[0]}, FRAMEWORKS)["pairs"][0]
    assert one["low"] is None and one["sentence"].startswith("one seed only: no interval")


def fake_seed(folder: Path, seed: int, frameworks=FRAMEWORKS) -> None:
    """A finished single comparison's report.json, as common.compare writes it (no training)."""
    folder.mkdir(parents=True)
    rows = [
        {
            "framework": f,
            "status": "finished",
            "seconds": 60.0,
            "data": "Fashion-MNIST: test data",
            **{m: RESULTS[f][m][seed] for m in stats.METRICS},
        }
        for f in frameworks
    ]
    flags = ["--resize=32", f"--seed={seed}", f"--init-from={folder}/init.safetensors", "--overwrite"]
    (folder / "report.json").write_text(json.dumps({"flags": flags, "same_init": True, "rows": rows}))


def test_report_over_seed_folders(tmp_path):
    """--rewrite-report writes report.md, .json and .png from the seed folders, training nothing."""
    for seed in range(4):
        fake_seed(tmp_path / f"seed-{seed}", seed)
    compare.main(["--seeds", "0", "1", "2", "3", "--rewrite-report", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["finished_seeds"] == [0, 1, 2, 3] and report["flags"] == ["--resize=32"]
    assert report["frameworks"]["torch"]["test_acc"]["values"] == {
        str(s): v for s, v in enumerate(RESULTS["torch"]["test_acc"])
    }
    md = (tmp_path / "report.md").read_text()
    assert "| torch | 0.8610 (0.8569 to 0.8651) |" in md  # 0.861 -+ 0.0041085, from test_interval_by_hand
    assert "torch is ahead of gluon by 0.0050 (interval 0.0037 to 0.0063)" in md
    assert "[seed 3](seed-3/report.md)" in md and "12 minutes" in md  # 4 seeds x 3 frameworks x 60 s
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit) as e:  # a seed without a report: the report says so and the exit code too
        compare.main(["--seeds", "0", "1", "7", "--rewrite-report", "--out", str(tmp_path)])
    assert e.value.code == 1 and json.loads((tmp_path / "report.json").read_text())["missing_seeds"] == [7]


TINY = [
    "--width-ratio", "8", "--scale-classifier", "--resize", "32", "--data-dir", str(SAMPLE),
    "--batch-size", "32", "--max-steps", "3", "--epochs", "1", "--lr", "0.01", "--frameworks", "torch,gluon",
]  # fmt: skip


def test_interrupted_multi_seed_run_continues_with_the_next_seed(tmp_path):
    """Stopped (Ctrl-C to the whole process group) while seed 1 trains, after seed 0 finished; the same
    command again keeps seed 0 untouched and runs seed 1, and the report covers both."""
    cmd = [sys.executable, "-m", "common.compare", "--seeds", "0", "1", *TINY, "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (tmp_path / "seed-1" / "init.safetensors").exists():  # seed 0 done, seed 1 begun
            assert proc.poll() is None and time.time() < deadline, "the first run ended early"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert (tmp_path / "seed-0" / "report.json").is_file() and not (tmp_path / "seed-1" / "report.json").exists()
    assert not (tmp_path / "report.json").exists()
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "seed-0").rglob("*") if p.is_file()}

    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "=== seed 0: kept" in r.stdout and "=== seed 1 of 0 1" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "seed-0").rglob("*") if p.is_file()} == kept
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["finished_seeds"] == [0, 1] and report["frameworks"]["torch"]["test_acc"]["n"] == 2
    assert [p["metric"] for p in report["pairs"]] == list(stats.METRICS)  # torch - gluon, each metric
    seed1 = json.loads((tmp_path / "seed-1" / "report.json").read_text())
    assert "--seed=1" in seed1["flags"] and all(row["status"] == "finished" for row in seed1["rows"])


def test_seeds_refuse_a_single_comparison_folder(tmp_path, capsys):
    """--seeds writes its report over the seed folders in --out: a folder holding one comparison's
    report is not overwritten."""
    (tmp_path / "report.json").write_text(json.dumps({"flags": [], "rows": []}))
    with pytest.raises(SystemExit) as e:
        compare.main(["--seeds", "0", "1", "--out", str(tmp_path)])
    assert e.value.code == 2 and "holds a comparison, not a comparison over seeds" in capsys.readouterr().err
    assert json.loads((tmp_path / "report.json").read_text()) == {"flags": [], "rows": []}
