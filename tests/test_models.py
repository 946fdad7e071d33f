"""Each framework's model against the shared arithmetic: shapes and parameter counts."""

import numpy as np
import pytest

from common.arch import CONFIGS, expected_counts, expected_shapes, make_spec

RATIOS = (1, 4, 8)
SIZES = (32, 64, 96, 224)
IO = {"fashion": dict(in_channels=1, num_classes=10), "imagenet": dict(in_channels=3, num_classes=1000)}


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_shapes_and_counts_match_arithmetic(fw, arch):
    """Every configuration x {1x.../10, 3x.../1000} x ratios x input sizes."""
    for io in IO.values():
        for ratio in RATIOS:
            for size in SIZES:
                kw = dict(io, width_ratio=ratio, image_size=size)
                spec = make_spec(arch, **kw)
                net = fw.abstract(arch, **kw)
                where = f"{fw.name} {arch} {kw}"
                assert fw.shapes(net) == expected_shapes(spec), where
                assert fw.count(net) == expected_counts(spec), where


@pytest.mark.parametrize(
    "arch,expected",
    [
        ("vgg11", 132_863_336),
        ("vgg13", 133_047_848),
        ("vgg16", 138_357_544),
        ("vgg19", 143_667_240),
        ("vgg11_bn", 132_868_840),
        ("vgg16_bn", 138_365_992),
    ],
)
def test_counts_match_torchvision_published(fw, arch, expected):
    assert fw.count(fw.abstract(arch, in_channels=3, num_classes=1000))[0] == expected


def test_d2l_conv_arch_builds_vgg11(fw):
    conv_arch = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
    assert fw.count(fw.abstract(conv_arch, width_ratio=4)) == fw.count(fw.abstract("vgg11", width_ratio=4))


def test_model_module_exports_the_shared_names(fw):
    """`from vgg_X.model import *` gives the same builders and reports in each framework, and only names that exist."""
    assert {"vgg_block", "vgg", "layer_shapes", "count_parameters", "summary"} <= set(fw.m.__all__)
    assert [n for n in fw.m.__all__ if not hasattr(fw.m, n)] == []


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_real_forward_gives_finite_logits(fw, arch):
    """Not only shapes: every configuration computes, at the smallest size and width."""
    x = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    out = fw.logits(arch, x, width_ratio=8, scale_classifier=True, image_size=32)
    assert out.shape == (2, 10) and np.isfinite(out).all() and out.std() > 0


@pytest.mark.parametrize("init", ["xavier", "d2l", "kaiming"])
def test_initialisation_distribution(fw, init):
    """The same distributions in all three: Xavier-uniform, bound sqrt(6 / (fan_in + fan_out)); or
    Kaiming-normal fan-out, std sqrt(2 / fan_out), with N(0, 0.01) dense layers. Zero biases, except
    for d2l: PyTorch's default bias draw, uniform within +-1/sqrt(fan_in), which d2l's PyTorch code keeps."""
    params = fw.params("vgg11", init=init, width_ratio=4, image_size=32)
    conv_w = next(v for k, v in params.items() if k.startswith("block2.conv1.") and v.ndim == 4)  # 16 -> 32, 3x3
    fc_w = next(v for k, v in params.items() if k.startswith("fc2.") and v.ndim == 2)  # 4096 -> 4096
    biases = {k: v for k, v in params.items() if k.endswith(".bias")}
    assert len(biases) == 8 + 3
    if init == "d2l":
        # fan_in by hand at ratio 4, 32 px, 1 input channel: block1.conv1 1 x 3 x 3 = 9; block2.conv1
        # 16 x 9 = 144; fc1 128 channels x 1 x 1 after five poolings = 128; fc2 and fc3 4096
        for name, fan_in, bound in (
            ("block1.conv1.bias", 9, 1 / 3),  # 1/sqrt(9) = 0.333
            ("block2.conv1.bias", 144, 1 / 12),  # 1/sqrt(144) = 0.0833
            ("fc1.bias", 128, 0.08839),  # 1/sqrt(128) = 0.08839
            ("fc2.bias", 4096, 1 / 64),  # 1/sqrt(4096) = 0.015625
        ):
            b = biases[name]
            assert np.isclose(bound, fan_in**-0.5, rtol=1e-4), name
            assert np.abs(b).max() <= bound * (1 + 1e-6), name
            assert np.abs(b).max() > bound * 0.5, name  # 16 or more draws all below half: p <= 0.5**16
        for name in ("fc1.bias", "fc2.bias"):  # 4096 draws: std of U(-a, a) is a / sqrt(3); both signs
            b, bound = biases[name], {"fc1.bias": 128**-0.5, "fc2.bias": 4096**-0.5}[name]
            assert np.isclose(b.std(), bound / np.sqrt(3), rtol=0.05) and b.min() < -0.9 * bound, name
    else:
        assert all((b == 0).all() for b in biases.values())
    conv_fan_in, conv_fan_out = 16 * 9, 32 * 9
    if init in ("xavier", "d2l"):
        for w, fan_in, fan_out in ((conv_w, conv_fan_in, conv_fan_out), (fc_w, 4096, 4096)):
            bound = np.sqrt(6 / (fan_in + fan_out))
            assert bound * 0.98 < np.abs(w).max() <= bound
            assert np.isclose(w.std(), bound / np.sqrt(3), rtol=0.05)
    else:
        assert np.isclose(conv_w.std(), np.sqrt(2 / conv_fan_out), rtol=0.05)
        assert np.abs(conv_w).max() > 3 * np.sqrt(2 / conv_fan_out)  # not truncated at 2 std
        assert np.isclose(fc_w.std(), 0.01, rtol=0.02)


def test_d2l_init_draws_what_d2l_code_draws():
    """--init d2l in PyTorch gives the very values d2l's own code gives from the same
    torch.manual_seed: its vgg_block / vgg (written here as d2l prints them, with ratio 4) and
    train_ch6's init_weights, which re-draws only the weights of nn.Linear and nn.Conv2d."""
    import torch
    from torch import nn

    from vgg_torch.model import vgg

    def d2l_vgg_block(num_convs, in_channels, out_channels):
        layers = []
        for _ in range(num_convs):
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
            layers.append(nn.ReLU())
            in_channels = out_channels
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        return nn.Sequential(*layers)

    def d2l_vgg(conv_arch, size):
        conv_blks, in_channels = [], 1
        for num_convs, out_channels in conv_arch:
            conv_blks.append(d2l_vgg_block(num_convs, in_channels, out_channels))
            in_channels = out_channels
        flat = out_channels * (size // 32) ** 2  # d2l writes out_channels * 7 * 7 for 224 px
        return nn.Sequential(
            *conv_blks, nn.Flatten(),
            nn.Linear(flat, 4096), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(4096, 10),
        )  # fmt: skip

    def init_weights(m):  # d2l.train_ch6's
        if type(m) == nn.Linear or type(m) == nn.Conv2d:  # noqa: E721 (as d2l writes it)
            nn.init.xavier_uniform_(m.weight)

    conv_arch = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
    torch.manual_seed(3)
    theirs = d2l_vgg([(n, c // 4) for n, c in conv_arch], 32)
    theirs.apply(init_weights)
    torch.manual_seed(3)
    ours = vgg("vgg11", init="d2l", width_ratio=4, image_size=32)
    a, b = list(theirs.state_dict().values()), list(ours.state_dict().values())
    assert len(a) == len(b) == 22 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_parameter_names_follow_one_scheme(fw):
    """block{i}.conv{j}.*, block{i}.bn{j}.*, fc{k}.*: a weight converter is a rename plus a transpose."""
    params = fw.params("vgg11_bn", width_ratio=8, image_size=32)
    layers = sorted({k.rsplit(".", 1)[0] for k in params})
    expected = sorted(
        [
            f"block{i}.{kind}{j}"
            for i, n in zip(range(1, 6), (1, 1, 2, 2, 2))
            for j in range(1, n + 1)
            for kind in ("conv", "bn")
        ]
        + ["fc1", "fc2", "fc3"]
    )
    assert layers == expected


def test_d2l_init_under_the_same_start_is_the_same_values(fw):
    """common.compare's same start with --init d2l: PyTorch draws the weights (vgg_torch.weights.draw's
    way), each framework loads them, and each holds exactly PyTorch's values, non-zero biases included."""
    import torch

    from vgg_torch.model import vgg as torch_vgg
    from vgg_torch.weights import to_canonical

    kw = dict(width_ratio=8, scale_classifier=True, image_size=32)
    torch.manual_seed(0)
    drawn = to_canonical(torch_vgg("vgg11", init="d2l", **kw))
    assert np.abs(drawn["block1.conv1.bias"]).max() > 0.1  # d2l's biases, not zeros
    net = fw.build(make_spec("vgg11", **kw))
    own = fw.weights.to_canonical(net)
    assert not np.array_equal(own["block1.conv1.weight"], drawn["block1.conv1.weight"])  # its own draw first
    fw.weights.from_canonical(net, drawn)
    got = fw.weights.to_canonical(net)
    assert got.keys() == drawn.keys() and all(np.array_equal(got[k], drawn[k]) for k in drawn)
