"""The canonical weight format: names and shapes, files, the compatibility check and its
messages, the torchvision mapping, and the `vgg_X.evaluate` commands."""

import json
import os
import re
from math import prod

import numpy as np
import pytest
from frameworks import random_canonical

from common import FRAMEWORKS, PACKAGES
from common.arch import CONFIGS, D2L_CONV_ARCH, expected_counts, make_spec
from common.data import SAMPLE_DIR
from common.weights import (
    WeightsError,
    check_compatible,
    expected_canonical,
    load_weights,
    read_spec,
    save_weights,
    spec_from_metadata,
    spec_metadata,
)

TINY = dict(width_ratio=8, scale_classifier=True, image_size=32)


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_expected_canonical_adds_up_to_the_parameter_count(arch):
    """Two pieces of arithmetic that share no code: every tensor's size sums to params + buffers."""
    for kw in (dict(in_channels=3, num_classes=1000), dict(TINY, image_size=(64, 96))):
        spec = make_spec(arch, **kw)
        assert sum(prod(s) for s in expected_canonical(spec).values()) == sum(expected_counts(spec))


def test_canonical_names_shapes_and_order_in_every_framework(fw):
    """Each framework's to_canonical gives exactly the expected names and shapes, in network order."""
    for arch in ("vgg11_bn", "vgg16_c"):
        spec = make_spec(arch, **TINY)
        got = fw.weights.to_canonical(fw.build(spec))
        expected = expected_canonical(spec)
        assert list(got) == list(expected), f"{fw.name} {arch}"
        assert {k: v.shape for k, v in got.items()} == expected and all(v.dtype == np.float32 for v in got.values())
    assert list(expected)[:6] == [
        "block1.conv1.weight",
        "block1.conv1.bias",
        "block1.conv2.weight",
        "block1.conv2.bias",
        "block2.conv1.weight",
        "block2.conv1.bias",
    ]


def test_save_and_load_in_every_framework(fw, tmp_path):
    """save() writes the canonical tensors and the spec; load() into a fresh model gives them back."""
    spec = make_spec("vgg11_bn", **TINY)
    tensors = random_canonical(spec)
    path = tmp_path / "w.safetensors"
    fw.weights.save(fw.weights.from_canonical(fw.build(spec), tensors), path)
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]  # no temp file left behind
    got, metadata = load_weights(path)
    assert metadata["framework"] == fw.name and spec_from_metadata(metadata) == spec
    assert all(np.array_equal(got[k], tensors[k]) for k in tensors) and list(got) == list(tensors)
    back = fw.weights.to_canonical(fw.weights.load(fw.build(spec), path))
    assert all(np.array_equal(back[k], tensors[k]) for k in tensors)


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("vgg11", dict(width_ratio=8, scale_classifier=True)),
        ("vgg16_c", dict(in_channels=3, num_classes=1000, width_ratio=16, image_size=32)),
        ("vgg11_lrn", dict(image_size=(64, 96), dropout=0.1)),
        ("vgg19_bn", dict(width_ratio=4, scale_classifier=True)),
        (D2L_CONV_ARCH, dict(width_ratio=4, image_size=96)),
    ],
)
def test_metadata_rebuilds_the_same_spec(tmp_path, arch, kw):
    spec = make_spec(arch, **kw)
    shapes = expected_canonical(spec)
    path = tmp_path / "w.safetensors"
    save_weights(path, {k: np.zeros(s, np.float32) for k, s in shapes.items()}, spec_metadata(spec, note="x"))
    got_spec, tensors, metadata = read_spec(path)
    assert got_spec == spec and metadata["note"] == "x" and list(tensors) == list(shapes)


# --- the compatibility check: the first layer that differs, by name and shape ---------------


def _error(expected_spec, got_spec):
    with pytest.raises(WeightsError) as e:
        check_compatible(expected_canonical(expected_spec), expected_canonical(got_spec), "this model")
    return str(e.value)


@pytest.mark.parametrize(
    "model,weights,first,detail",
    [
        # vgg11 has 1 conv in block 1, vgg13 has 2: the extra block1.conv2 comes first
        (
            ("vgg11", TINY),
            ("vgg13", TINY),
            "block1.conv2",
            "the weights have block1.conv2.weight (8, 8, 3, 3), which this model does not",
        ),
        (
            ("vgg13", TINY),
            ("vgg11", TINY),
            "block1.conv2",
            "block1.conv2.weight (8, 8, 3, 3) is missing from the weights",
        ),
        (
            ("vgg11", dict(TINY, width_ratio=4)),
            ("vgg11", TINY),
            "block1.conv1",
            "block1.conv1.weight is (8, 1, 3, 3) in the weights but (16, 1, 3, 3) in this model",
        ),
        (
            ("vgg11", dict(TINY, image_size=64)),
            ("vgg11", TINY),
            "fc1",
            "fc1.weight is (512, 64) in the weights but (512, 256) in this model",
        ),
        (("vgg11", TINY), ("vgg11_bn", TINY), "block1.bn1", "the weights have block1.bn1.weight (8,)"),
        (
            ("vgg11", TINY),
            ("vgg11", dict(TINY, num_classes=5)),
            "fc3",
            "fc3.weight is (5, 512) in the weights but (10, 512)",
        ),
        (
            ("vgg11", TINY),
            ("vgg11", dict(TINY, in_channels=3)),
            "block1.conv1",
            "(8, 3, 3, 3) in the weights but (8, 1, 3, 3)",
        ),
    ],
)
def test_mismatch_names_the_first_layer_that_differs(model, weights, first, detail):
    msg = _error(make_spec(model[0], **model[1]), make_spec(weights[0], **weights[1]))
    assert f"the first layer that differs is {first}:" in msg and detail in msg, msg


def test_mismatch_in_a_framework_leaves_the_model_untouched(fw):
    """Every loader checks first: a vgg13 file refused by a vgg11 model, which keeps its own weights."""
    spec = make_spec("vgg11", **TINY)
    net = fw.weights.from_canonical(fw.build(spec), random_canonical(spec))
    before = fw.weights.to_canonical(net)
    wrong = random_canonical(make_spec("vgg13", **TINY), seed=5)
    with pytest.raises(WeightsError, match=r"first layer that differs is block1\.conv2: the weights have"):
        fw.weights.from_canonical(net, wrong)
    after = fw.weights.to_canonical(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_name_that_is_not_canonical_is_reported():
    expected = expected_canonical(make_spec("vgg11", **TINY))
    got = {("block1.bn1.gamma" if k == "block1.conv1.bias" else k): v for k, v in expected.items()}
    with pytest.raises(WeightsError, match=r"is block1\.conv1: block1\.conv1\.bias \(8,\) is missing"):
        check_compatible(expected, got)
    got = dict(expected, **{"features.0.weight": (8, 1, 3, 3)})
    with pytest.raises(WeightsError, match=r"the weights have features\.0\.weight"):
        check_compatible(expected, got)


# --- files -----------------------------------------------------------------------------------


def test_file_errors(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        load_weights(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_weights(tmp_path / "junk.safetensors")
    from safetensors.numpy import save_file  # someone else's safetensors: tensors, no spec

    save_file({"features.0.weight": np.zeros((2, 2), np.float32)}, tmp_path / "other.safetensors")
    with pytest.raises(WeightsError, match="not a vgg-three-ways/1 weights file"):
        read_spec(tmp_path / "other.safetensors")


# --- what a file may hold: finite floating-point numbers ------------------------------------


def _spec_and_tensors():
    spec = make_spec("vgg11", **TINY)
    return spec, random_canonical(spec)


def test_non_finite_tensors_are_refused_by_name(tmp_path):
    from safetensors.numpy import save_file

    spec, tensors = _spec_and_tensors()
    for bad, name, says in (
        (np.nan, "fc3.weight", "holds 3 NaN values (of 5,120)"),
        (np.inf, "block2.conv1.weight", "holds 3 infinite values"),
        (-np.inf, "fc1.bias", "holds 3 infinite values (of 512)"),
    ):
        broken = dict(tensors, **{name: tensors[name].copy()})
        broken[name].reshape(-1)[[0, 7, -1]] = bad
        save_file(broken, tmp_path / "w.safetensors", metadata=spec_metadata(spec))
        with pytest.raises(WeightsError, match=rf"w\.safetensors: {re.escape(name)} {re.escape(says)}.*must be finite"):
            load_weights(tmp_path / "w.safetensors")
    # several broken tensors: the first in network order is named, the others counted
    broken = {k: np.full_like(v, np.nan) if k in ("fc2.bias", "block3.conv2.weight") else v for k, v in tensors.items()}
    save_file(broken, tmp_path / "two.safetensors", metadata=spec_metadata(spec))
    with pytest.raises(WeightsError, match=r"block3\.conv2\.weight holds .*; 1 more tensor after it too"):
        read_spec(tmp_path / "two.safetensors")


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_])
def test_integer_tensors_are_refused(tmp_path, dtype):
    from safetensors.numpy import save_file

    spec, tensors = _spec_and_tensors()
    save_file(
        {k: (v * 100).astype(dtype) for k, v in tensors.items()},
        tmp_path / "w.safetensors",
        metadata=spec_metadata(spec),
    )
    kind = np.dtype(dtype).name
    with pytest.raises(WeightsError, match=rf"block1\.conv1\.weight stores {kind} values; weights are floating point"):
        load_weights(tmp_path / "w.safetensors")


def test_float16_and_float64_become_float32_with_a_note(tmp_path, capsys):
    from safetensors.numpy import save_file

    spec, tensors = _spec_and_tensors()
    for dtype, how in ((np.float16, "widened"), (np.float64, "narrowed")):
        save_file(
            {k: v.astype(dtype) for k, v in tensors.items()}, tmp_path / "w.safetensors", metadata=spec_metadata(spec)
        )
        got = read_spec(tmp_path / "w.safetensors")[1]
        assert all(
            got[k].dtype == np.float32 and np.array_equal(got[k], tensors[k].astype(dtype).astype(np.float32))
            for k in tensors
        )
        assert np.abs(got["fc1.weight"] - tensors["fc1.weight"]).max() > 0 or dtype is np.float64  # float16 rounds
        err = capsys.readouterr().err
        assert err == (
            f"note: {tmp_path / 'w.safetensors'} stores {np.dtype(dtype).name} (block1.conv1.weight and "
            f"{len(tensors) - 1} more); {how} to float32\n"
        ), err


def _write_safetensors_by_hand(path, tensors: dict, metadata: dict):
    """The safetensors layout, written from its specification: u64 little-endian header size, JSON
    header (dtype, shape, byte offsets), then the bytes. tensors: name -> (dtype name, shape, raw bytes)."""
    header, offset, body = {"__metadata__": metadata}, 0, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset, body = offset + len(raw), body + raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + body)


def test_bfloat16_is_widened_exactly(tmp_path, capsys):
    """bfloat16 is the upper half of a float32: values cut to 16 bits must come back bit for bit.
    NumPy has no bfloat16, so the file is written by hand from the format's specification."""
    spec, tensors = _spec_and_tensors()
    cut = {k: (v.view(np.uint32) & 0xFFFF0000).view(np.float32) for k, v in tensors.items()}
    _write_safetensors_by_hand(
        tmp_path / "w.safetensors",
        {k: ("BF16", v.shape, (v.view(np.uint32) >> 16).astype("<u2").tobytes()) for k, v in cut.items()},
        spec_metadata(spec),
    )
    got_spec, got, _ = read_spec(tmp_path / "w.safetensors")
    assert got_spec == spec and all(got[k].dtype == np.float32 and np.array_equal(got[k], cut[k]) for k in cut)
    assert "stores bfloat16 (block1.conv1.weight and 21 more); widened to float32" in capsys.readouterr().err


def test_a_folder_given_as_weights(tmp_path):
    with pytest.raises(WeightsError, match=r"is a folder, not a weights file; it holds no model\.safetensors"):
        load_weights(tmp_path)
    spec, tensors = _spec_and_tensors()
    save_weights(tmp_path / "model.safetensors", tensors, spec_metadata(spec))
    inside = re.escape(str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match=rf"a weights file; did you mean {inside}\?"):
        read_spec(tmp_path)


@pytest.mark.parametrize(
    "field,value,says",
    [
        ("image_size", [16, 16], "5 poolings shrink a (16, 16) input to nothing"),
        ("num_classes", 0, "sizes must be positive integers"),
        ("blocks", [[8, [5]]], "every block needs positive channels and kernels of size 1 or 3"),
        ("dropout", 1.5, "dropout must lie in [0, 1)"),
        ("in_channels", "1", "sizes must be positive integers"),
    ],
)
def test_a_spec_that_cannot_be_built_is_refused(tmp_path, field, value, says):
    spec, tensors = _spec_and_tensors()
    metadata = spec_metadata(spec)
    metadata["spec"] = json.dumps(dict(json.loads(metadata["spec"]), **{field: value}))
    save_weights(tmp_path / "w.safetensors", tensors, metadata)
    with pytest.raises(
        WeightsError,
        match=rf"w\.safetensors: the file's metadata holds no usable VGG spec "
        rf"\({re.escape(says)}",
    ):
        read_spec(tmp_path / "w.safetensors")


def test_save_overwrites_atomically(tmp_path):
    spec = make_spec("vgg11", **TINY)
    path = tmp_path / "w.safetensors"
    for seed in (0, 1):
        save_weights(path, random_canonical(spec, seed), spec_metadata(spec))
    assert os.listdir(tmp_path) == ["w.safetensors"]
    assert np.array_equal(load_weights(path)[0]["fc3.bias"], random_canonical(spec, 1)["fc3.bias"])


# --- torchvision's names ---------------------------------------------------------------------


def test_torchvision_mapping_of_names():
    """torchvision's layer indices, written out by hand from torchvision/models/vgg.py's make_layers."""
    from vgg_torch.weights import from_torchvision

    sd = {
        f"{k}.weight": np.zeros(1)
        for k in (
            "features.0",
            "features.3",
            "features.6",
            "features.8",
            "features.11",
            "features.13",
            "features.16",
            "features.18",
            "classifier.0",
            "classifier.3",
            "classifier.6",
        )
    }
    assert list(from_torchvision(sd, "vgg11")) == [
        f"{n}.weight"
        for n in (
            "block1.conv1",
            "block2.conv1",
            "block3.conv1",
            "block3.conv2",
            "block4.conv1",
            "block4.conv2",
            "block5.conv1",
            "block5.conv2",
            "fc1",
            "fc2",
            "fc3",
        )
    ]
    bn = {
        "features.0.weight": 0,
        "features.1.running_var": 0,
        "features.1.num_batches_tracked": 0,
        "features.4.bias": 0,
        "features.5.running_mean": 0,
    }
    assert list(from_torchvision(bn, "vgg11_bn")) == [
        "block1.conv1.weight",
        "block1.bn1.running_var",
        "block2.conv1.bias",
        "block2.bn1.running_mean",
    ]
    with pytest.raises(WeightsError, match=r"torchvision key features\.2\.weight has no place in vgg11"):
        from_torchvision({"features.2.weight": np.zeros(1)}, "vgg11")  # vgg13's block1.conv2


# --- python -m vgg_X.evaluate ----------------------------------------------------------------


def test_evaluate_commands_agree(tmp_path, capsys):
    """Weights saved by torch, evaluated by all three: the same accuracy, to the image."""
    from vgg_gluon.evaluate import main as gluon_main

    import vgg_torch.model
    import vgg_torch.weights
    from vgg_flax.evaluate import main as flax_main
    from vgg_torch.evaluate import main as torch_main

    spec = make_spec("vgg11_bn", **TINY)
    net = vgg_torch.weights.from_canonical(vgg_torch.model.vgg(spec), random_canonical(spec, seed=3))
    path = tmp_path / "trained_in_torch.safetensors"
    vgg_torch.weights.save(net, path)
    counts = {}
    for name, main in (("torch", torch_main), ("gluon", gluon_main), ("flax", flax_main)):
        main(["--weights", str(path), "--data-dir", str(SAMPLE_DIR), "--device", "cpu"])
        out = capsys.readouterr().out
        assert "vgg11_bn/8 (32x32 px)" in out and "saved by torch" in out and "1,000 test images" in out, out
        counts[name] = re.search(r"test accuracy [\d.]+ \(([\d,]+) / 1,000\)", out)[1]
    assert len(set(counts.values())) == 1, counts


@pytest.mark.parametrize("mod", PACKAGES)
def test_evaluate_errors_are_one_line(tmp_path, capsys, mod):
    import importlib

    main = importlib.import_module(f"{mod}.evaluate").main
    spec = make_spec("vgg11", in_channels=3, num_classes=1000, width_ratio=8, scale_classifier=True, image_size=32)
    save_weights(tmp_path / "imagenet.safetensors", random_canonical(spec), spec_metadata(spec))
    for path, message in (
        (tmp_path / "nope.safetensors", "no such file"),
        (tmp_path / "imagenet.safetensors", "needs 1 channel, 10 classes"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["--weights", str(path)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err


# --- the same start: python -m vgg_X.weights --draw and the train command's Backend ----------


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_draw_gives_the_weights_that_training_starts_from(tmp_path, capsys, fw):
    """`vgg_X.weights --draw` and `vgg_X.train.Backend`, built from the same flags, hold the same
    weights to the bit (both call vgg_X.model.build); another --seed draws other weights."""
    import importlib

    from common.cli import parse_train_args
    from common.contract import TrainConfig

    flags = ["--arch", "vgg11_bn", "--width-ratio", "8", "--scale-classifier", "--resize", "32", "--device", "cpu"]
    flags += ["--init", "kaiming", "--seed", "3", "--batch-size", "8"]
    weights, train = importlib.import_module(f"vgg_{fw}.weights"), importlib.import_module(f"vgg_{fw}.train")
    weights.main(["--draw", str(tmp_path / "drawn.safetensors"), *flags])
    assert "vgg11_bn/8 at 32 px, --init kaiming, --seed 3" in capsys.readouterr().out
    drawn = load_weights(tmp_path / "drawn.safetensors")[0]
    started = train.Backend(TrainConfig.from_args(parse_train_args(flags))).canonical()
    assert list(drawn) == list(started) == list(expected_canonical(make_spec("vgg11_bn", **TINY)))
    for k in drawn:
        np.testing.assert_array_equal(drawn[k], started[k], err_msg=f"{fw} {k}")
    other = train.Backend(TrainConfig.from_args(parse_train_args([*flags, "--seed", "4"]))).canonical()
    assert not np.array_equal(other["block1.conv1.weight"], drawn["block1.conv1.weight"])


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_weights_record_the_pixels_and_evaluate_feeds_them(tmp_path, capsys, fw):
    """A model trained on d2l's pixels (--pixels d2l) and standardised ones (--normalize): the file
    that --draw and the train command's export write says so, and evaluate feeds the model those
    pixels: its accuracy is the one the loader with pixels='d2l', normalize=True gives."""
    import importlib

    from common.cli import parse_train_args
    from common.contract import TrainConfig
    from common.data import Loader, load_fashion_mnist
    from common.training import accuracy

    flags = ["--width-ratio", "8", "--scale-classifier", "--resize", "32", "--device", "cpu", "--batch-size", "8"]
    flags += ["--pixels", "d2l", "--normalize"]
    weights, train = importlib.import_module(f"vgg_{fw}.weights"), importlib.import_module(f"vgg_{fw}.train")
    weights.main(["--draw", str(tmp_path / "drawn.safetensors"), *flags])
    backend = train.Backend(TrainConfig.from_args(parse_train_args(flags)))
    backend.export(tmp_path / "exported.safetensors")
    for name in ("drawn", "exported"):
        metadata = load_weights(tmp_path / f"{name}.safetensors")[1]
        assert (metadata["pixels"], metadata["normalize"]) == ("d2l", "True"), (name, metadata)
    capsys.readouterr()
    importlib.import_module(f"vgg_{fw}.evaluate").main(
        ["--weights", str(tmp_path / "exported.safetensors"), "--data-dir", str(SAMPLE_DIR), "--device", "cpu"]
    )
    out = capsys.readouterr().out
    assert "(32x32 px, normalised, d2l pixels)" in out, out
    data = load_fashion_mnist(str(SAMPLE_DIR))
    loader = Loader(data.test_images, data.test_labels, batch_size=256, resize=32, shuffle=False, normalize=True,
                    pixels="d2l")  # fmt: skip
    expected = round(accuracy(backend, loader) * len(data.test_labels))
    assert f"({expected:,} / 1,000)" in out, (expected, out)
