"""The per-layer profile: its arithmetic against hand-worked figures and against common.arch's
totals, and each framework's measured rows against the model's layers. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common import arch
from common.arch import make_spec
from common.profile import layer_costs, main

expected_counts = arch.expected_counts
expected_shapes = arch.expected_shapes

ROOT = Path(__file__).resolve().parents[1]
VGG11_ROWS = [
    "block1.conv1",
    "block1.pool",
    "block2.conv1",
    "block2.pool",
    "block3.conv1",
    "block3.conv2",
    "block3.pool",
    "block4.conv1",
    "block4.conv2",
    "block4.pool",
    "block5.conv1",
    "block5.conv2",
    "block5.pool",
    "fc1",
    "fc2",
    "fc3",
]


def rows_of(spec):
    return {r["layer"]: r for r in layer_costs(spec)}


def test_vgg11_at_224_by_hand():
    rows = rows_of(make_spec("vgg11", in_channels=1, num_classes=10, image_size=224))
    assert list(rows) == VGG11_ROWS
    c1 = rows["block1.conv1"]  # 1x224x224 -> 64 channels, 3x3, 'same'
    assert c1["output_shape"] == (64, 224, 224)
    assert c1["parameters"] == 576 + 64
    assert c1["flops"] == 2 * 64 * 9 * 224 * 224 == 57_802_752
    assert c1["backward_flops"] == c1["flops"]  # the image needs no gradient: the weights' alone
    assert c1["activations"] == 64 * 224 * 224
    c2 = rows["block2.conv1"]  # 64x112x112 -> 128
    assert c2["output_shape"] == (128, 112, 112)
    assert c2["parameters"] == 3 * 3 * 64 * 128 + 128 == 73_856
    assert c2["flops"] == 2 * 9 * 64 * 128 * 112 * 112
    assert c2["backward_flops"] == 2 * c2["flops"]  # the weights' gradient and the input's
    pool = rows["block1.pool"]
    assert pool["output_shape"] == (64, 112, 112) and pool["parameters"] == 0 and pool["flops"] == 0
    assert rows["block5.pool"]["output_shape"] == (512, 7, 7)
    assert rows["fc1"]["output_shape"] == (4096,)
    assert rows["fc1"]["parameters"] == 512 * 7 * 7 * 4096 + 4096 == 102_764_544
    assert rows["fc1"]["flops"] == 2 * 25088 * 4096
    assert rows["fc2"]["parameters"] == 4096 * 4096 + 4096
    assert rows["fc3"]["parameters"] == 4096 * 10 + 10 and rows["fc3"]["output_shape"] == (10,)


def test_published_total_and_variants():
    # torchvision's vgg11: 132,863,336 trainable parameters (3x224x224 in, 1000 classes)
    spec = make_spec("vgg11", in_channels=3, num_classes=1000)
    assert sum(r["parameters"] for r in layer_costs(spec)) == 132_863_336
    bn = rows_of(make_spec("vgg16_bn"))["block1.conv2"]  # 64 -> 64, plus batch norm's scale and shift
    assert bn["parameters"] == 9 * 64 * 64 + 64 + 2 * 64
    assert bn["activations"] == 2 * 64 * 224 * 224  # the convolution's output and the ReLU's
    assert rows_of(make_spec("vgg16_c"))["block3.conv3"]["parameters"] == 256 * 256 + 256  # config C's 1x1


@pytest.mark.parametrize(
    "name,kw",
    [
        ("vgg11", {}),
        ("vgg16_c", dict(width_ratio=2)),
        ("vgg19_bn", dict(image_size=64)),
        ("vgg11", dict(image_size=(64, 96), in_channels=3, num_classes=7)),
        (((1, 8), (2, 16), (1, 32)), dict(image_size=40)),
    ],
)
def test_totals_agree_with_common_arch(name, kw):
    spec = make_spec(name, **kw)
    rows = layer_costs(spec)
    assert sum(r["parameters"] for r in rows) == expected_counts(spec)[0]
    assert sum(r["flops"] for r in rows) == arch.flops_per_example(spec)
    # each block's pooling and each dense layer end in the shapes common.arch gives them
    shapes = dict(expected_shapes(spec))
    for i in range(1, len(spec.blocks) + 1):
        assert (1, *next(r for r in rows if r["layer"] == f"block{i}.pool")["output_shape"]) == shapes[f"block{i}"]
    for name in ("fc1", "fc2", "fc3"):
        assert (1, *next(r for r in rows if r["layer"] == name)["output_shape"]) == shapes[name]


def test_arithmetic_only_prints_the_table(tmp_path, capsys):
    main(["--arithmetic-only", "--width-ratio", "1", "--image-size", "224", "32", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| block1.conv1 | 64 x 224 x 224 | 640 |" in out
    assert "| fc1 | 4096 | 102,764,544 |" in out and "Against resolution" in out
    result = json.loads((tmp_path / "profile.json").read_text())
    assert [e["image_size"] for e in result["sizes"]] == [224, 32]
    assert (tmp_path / "profile.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--image-size", "16"], "smallest size that works is 32"),
        (["--frameworks", "caffe"], "unknown caffe"),
        (["--warmup", "0"], "at least 1"),
        (
            ["--report", str(ROOT / "benchmarks" / "results" / "throughput.json")],
            "not a JSON that python -m common.profile wrote",
        ),
    ],
)
def test_bad_flags_end_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--arithmetic-only", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "tiny.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "common.profile",
            "--width-ratio",
            "8",
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--repeat",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout, out


def test_each_framework_profiles_every_layer(measured):
    result, stdout, out = measured
    spec = make_spec("vgg11", image_size=32, width_ratio=8)
    expected = [(r["layer"], [8, *r["output_shape"]]) for r in layer_costs(spec)]
    assert [e["image_size"] for e in result["sizes"]] == [32]
    fws = result["sizes"][0]["frameworks"]
    assert [r["framework"] for r in fws] == ["vgg_torch", "vgg_gluon", "vgg_flax"]
    for r in fws:
        assert r["status"] == "ok", r
        # every layer, in order, with the output shape the arithmetic says (Flax's NHWC given as NCHW)
        assert [(row["layer"], row["output_shape"]) for row in r["layers"]] == expected, r["framework"]
        for row in r["layers"]:
            assert row["forward"]["best_s"] > 0 and row["backward"]["best_s"] > 0
        assert r["step"]["best_s"] > 0 and r["memory"]["peak_rss_mb"] > 0
        assert r["parameters"] == expected_counts(spec)[0]
    for text in ("| block5.pool |", "**train_step**", "torch ms fwd+bwd", "flax ms fwd+bwd"):
        assert text in stdout
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_report_redraws_an_earlier_run(measured, tmp_path, capsys):
    result, stdout, out = measured
    main(["--report", str(out), "--out", str(tmp_path / "again.json")])
    assert capsys.readouterr().out.split("\nwrote")[0] == stdout.split("\nwrote")[0]
    assert (tmp_path / "again.png").read_bytes()[:4] == b"\x89PNG"
