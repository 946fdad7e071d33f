"""The shared arithmetic against independent truths: the paper and torchvision."""

import subprocess
import sys

import pytest

from common.arch import (
    D2L_CONV_ARCH,
    ArchError,
    expected_counts,
    expected_shapes,
    flops_per_example,
    make_spec,
    parse_arch,
    valid_names,
)

# torchvision's published trainable-parameter counts (3x224x224, 1000 classes).
TORCHVISION = {
    "vgg11": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840,
    "vgg16_bn": 138_365_992,
}
# The paper's Table 2, in millions.
TABLE2 = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}


@pytest.mark.parametrize("name,expected", TORCHVISION.items())
def test_counts_match_torchvision(name, expected):
    assert expected_counts(make_spec(name, in_channels=3, num_classes=1000))[0] == expected


@pytest.mark.parametrize("letter,millions", TABLE2.items())
def test_counts_match_paper_table2(letter, millions):
    params, buffers = expected_counts(make_spec(letter, in_channels=3, num_classes=1000))
    assert round(params / 1e6) == millions and buffers == 0


def test_batch_norm_buffers_are_running_mean_and_var():
    # vgg11 has 8 convs of 64+128+256*2+512*4 = 2752 channels: 2 statistics each
    assert expected_counts(make_spec("vgg11_bn", in_channels=3, num_classes=1000))[1] == 2 * 2752


def test_d2l_conv_arch_is_vgg11():
    assert make_spec(D2L_CONV_ARCH).blocks == make_spec("vgg11").blocks
    assert parse_arch("((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))") == D2L_CONV_ARCH


def test_d2l_shapes_written_out():
    # d2l's per-block printout (1x224x224, 10 classes)
    assert expected_shapes(make_spec(D2L_CONV_ARCH)) == [
        ("block1", (1, 64, 112, 112)),
        ("block2", (1, 128, 56, 56)),
        ("block3", (1, 256, 28, 28)),
        ("block4", (1, 512, 14, 14)),
        ("block5", (1, 512, 7, 7)),
        ("flatten", (1, 25088)),
        ("fc1", (1, 4096)),
        ("fc2", (1, 4096)),
        ("fc3", (1, 10)),
    ]


def test_width_ratio_and_classifier_scaling():
    spec = make_spec("vgg11", width_ratio=4)
    assert [b.out_channels for b in spec.blocks] == [16, 32, 64, 128, 128] and spec.hidden_units == 4096
    spec = make_spec("vgg11", width_ratio=8, scale_classifier=True, image_size=96)
    assert spec.hidden_units == 512 and spec.flat_features == 64 * 3 * 3


def test_first_dense_layer_follows_input_size():
    assert make_spec("vgg16", image_size=96).flat_features == 512 * 3 * 3
    assert make_spec("vgg16", image_size=(64, 128)).flat_features == 512 * 2 * 4


def test_config_c_has_1x1_convolutions():
    ks = [b.kernel_sizes for b in make_spec("C").blocks]
    assert ks == [(3, 3), (3, 3), (3, 3, 1), (3, 3, 1), (3, 3, 1)]


def test_flops_written_out():
    # one block of one 3x3 conv 1->2 at 32x32, then dense 2*16*16 -> 4096 -> 4096 -> 10
    spec = make_spec(((1, 2),), image_size=32)
    conv = 2 * 9 * 1 * 2 * 32 * 32
    dense = 2 * (2 * 16 * 16 * 4096 + 4096 * 4096 + 4096 * 10)
    assert flops_per_example(spec) == conv + dense


@pytest.mark.parametrize(
    "arch,kwargs,needle",
    [
        ("vgg42", {}, "valid names: vgg11"),
        ("vgg11", {"width_ratio": 128}, "0 channels"),
        ("vgg11", {"image_size": 28}, "smallest size that works is 32"),
        (((1, 64), (1,)), {}, "block 2"),
        (((1, 64), (0, 128)), {}, "num_convs, out_channels"),
        (((1, 64), ("2", 128)), {}, "num_convs, out_channels"),
        ((), {}, "empty"),
        (42, {}, "neither a known name"),
        ("vgg11", {"in_channels": 0}, "in_channels"),
        ("vgg11", {"dropout": 1.0}, "dropout"),
        ("vgg11_lrn", {"batch_norm": True}, "pick one"),
    ],
)
def test_bad_input_errors_say_what_is_accepted(arch, kwargs, needle):
    with pytest.raises(ArchError, match=needle.replace("(", r"\(")):
        make_spec(arch, **kwargs)


def test_smallest_size_follows_block_count():
    with pytest.raises(ArchError, match="smallest size that works is 8"):
        make_spec(((1, 8), (1, 8), (1, 8)), image_size=4)
    make_spec(((1, 8), (1, 8), (1, 8)), image_size=8)


def test_every_name_resolves():
    for name in valid_names():
        assert len(make_spec(name).blocks) == 5


def test_common_imports_no_framework():
    code = (
        "import sys, common, common.arch, common.cli, common.summary, importlib, pkgutil\n"
        "for m in pkgutil.iter_modules(common.__path__): importlib.import_module('common.' + m.name)\n"
        "bad = [m for m in ('torch', 'mxnet', 'jax', 'flax', 'optax') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
