"""Same weights, same answers: the three frameworks compute the same function.

Weights go in through each framework's converter (vgg_X/weights.py); logits, losses,
gradients and SGD updates come out and are compared pairwise, in float32 (TF32 off
where a GPU would use it), with tolerances relative to the scale of what is compared.
torchvision's own VGG is the independent reference for the torchvision loader.
"""

import itertools
import os

import numpy as np
import pytest
from frameworks import ADAPTERS, random_canonical

from common.arch import CONFIGS, make_spec

SMALL = dict(width_ratio=8, scale_classifier=True, image_size=(64, 96))  # 2x3 last feature map: fc1's order matters
RTOL = 1e-4  # of the largest |logit|: float32 rounding over a few thousand-term sums is ~1e-6


@pytest.fixture(scope="module")
def fws():
    return {name: cls() for name, cls in ADAPTERS.items()}


@pytest.fixture(autouse=True)
def float32_everywhere():
    """TF32 (GPU matmuls with 10-bit mantissas) off in torch and JAX; a no-op on CPU."""
    import jax
    import torch

    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with jax.default_matmul_precision("float32"):
        yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def assert_close(a, b, what, rtol=RTOL, scale=None):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} and {b.shape}"
    scale = max(np.abs(a).max(), np.abs(b).max()) if scale is None else scale
    err = np.abs(a - b).max()
    assert err <= rtol * scale, f"{what}: max |difference| {err:.3g} > {rtol:g} x scale {scale:.3g}"


def loaded(fw, spec, tensors):
    return fw.weights.from_canonical(fw.build(spec), tensors)


def images(spec, n, seed=0):
    h, w = spec.image_size
    return np.random.default_rng(seed).random((n, spec.in_channels, h, w), dtype=np.float32)


def logits_of_all(fws, spec, tensors, x):
    return {name: fw.infer(loaded(fw, spec, tensors), x) for name, fw in fws.items()}


def assert_all_pairs_close(outs, what):
    for a, b in itertools.combinations(outs, 2):
        assert_close(outs[a], outs[b], f"{what}: {a} vs {b}")


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_logits_agree_every_config(fws, arch):
    """Inference mode: dropout off, batch norm on (non-trivial) running statistics."""
    spec = make_spec(arch, **SMALL)
    x = images(spec, 3)
    if spec.lrn:
        x *= 30  # LRN's alpha term is ~1e-4 * x^2: large activations make it matter, so a wrong LRN shows
    outs = logits_of_all(fws, spec, random_canonical(spec), x)
    spread = outs["torch"].std(0).max() / np.abs(outs["torch"]).max()
    assert spread > 0.01, f"{arch}: the logits hardly depend on the input ({spread:.2g}); the test would be weak"
    assert_all_pairs_close(outs, arch)


def test_logits_agree_full_width(fws):
    """vgg11 at full width (64..512 channels, 4096 hidden units), torch-initialised, converted."""
    import torch

    spec = make_spec("vgg11", image_size=64)
    torch.manual_seed(0)
    tensors = fws["torch"].weights.to_canonical(fws["torch"].build(spec))
    tensors = {k: v + 0.01 if k.endswith("bias") else v for k, v in tensors.items()}  # Xavier leaves biases 0
    assert_all_pairs_close(logits_of_all(fws, spec, tensors, images(spec, 2)), "vgg11 full width")


def _cancels(spec, name):
    """A conv bias followed by batch norm in training mode: the batch mean subtracts it again, so
    its gradient is 0 in exact arithmetic and rounding noise in each framework (~1e-5 of the largest)."""
    return spec.batch_norm and ".conv" in name and name.endswith(".bias")


def _assert_same_change(spec, changes, what, rtol=RTOL):
    """Per-tensor changes (gradients, SGD updates) agree pairwise, each tensor against its own scale;
    the ones that cancel are 0 up to rounding everywhere."""
    top = max(np.abs(g).max() for c in changes.values() for g in c.values())
    for a, b in itertools.combinations(changes, 2):
        ga, gb = changes[a], changes[b]
        assert sorted(ga) == sorted(gb), f"{what}: {a} and {b} differ in which tensors change"
        for k in ga:
            if _cancels(spec, k):
                assert max(np.abs(ga[k]).max(), np.abs(gb[k]).max()) <= 1e-4 * top, f"{what} of {k} is not ~0"
            else:
                assert_close(ga[k], gb[k], f"{what} of {k}: {a} vs {b}", rtol=rtol)


def _mxnet_onednn():
    import vgg_gluon  # noqa: F401  (np.bool before mxnet)

    import mxnet as mx

    return mx.runtime.Features().is_enabled("MKLDNN") and os.environ.get("MXNET_MKLDNN_ENABLED", "1") != "0"


def _loss_and_gradients(fws, arch, names):
    """Training mode (batch norm on batch statistics), dropout 0, 4 images, one batch."""
    spec = make_spec(arch, **SMALL, dropout=0.0)
    tensors, x = random_canonical(spec), images(spec, 4) * (30 if spec.lrn else 1)
    y = np.array([0, 3, 7, 9])
    return spec, {name: fws[name].loss_grads(loaded(fws[name], spec, tensors), x, y) for name in names}


@pytest.mark.parametrize("arch", ["vgg11", "vgg11_bn", "vgg11_lrn", "vgg16_c"])
def test_loss_and_gradients_agree(fws, arch):
    """The same loss and the same gradient for every parameter, compared in the canonical layout."""
    names = list(fws)
    if arch == "vgg11_lrn" and _mxnet_onednn():
        names.remove("gluon")  # see test_gluon_lrn_gradient_on_onednn
    spec, results = _loss_and_gradients(fws, arch, names)
    for a, b in itertools.combinations(results, 2):
        assert np.isclose(results[a][0], results[b][0], rtol=1e-5), (
            f"{arch} loss: {a} {results[a][0]} vs {b} {results[b][0]}"
        )
    _assert_same_change(spec, {n: r[1] for n, r in results.items()}, f"{arch} gradient")


def test_gluon_lrn_gradient_on_onednn(fws, request):
    """A defect of MXNet 1.9.1 (retired, so unfixed), not of the model: with oneDNN (MKL-DNN, the CPU
    default) the backward of Activation(relu) -> LRN -> max-pool gives block1.conv1's gradient ~2-4%
    off when LRN's alpha term matters (inputs x 30 here; ~4e-5 at Fashion-MNIST's 0-1 pixels). The
    forward pass is exact; MXNET_MKLDNN_ENABLED=0 gives the right gradient. Strict: this test starts
    failing, as a reminder, the day the gradient comes out right."""
    if _mxnet_onednn():
        request.applymarker(pytest.mark.xfail(strict=True, reason="MXNet 1.9.1 oneDNN LRN/max-pool backward"))
    spec, results = _loss_and_gradients(fws, "vgg11_lrn", ["torch", "gluon"])
    _assert_same_change(spec, {n: r[1] for n, r in results.items()}, "vgg11_lrn gradient")


@pytest.mark.parametrize("arch", ["vgg11", "vgg11_bn"])
def test_one_sgd_step_agrees(fws, arch):
    """One step of each framework's own SGD (lr 0.1) from the same weights makes the same update.
    Batch norm's running variance is the one documented difference: torch folds in the unbiased
    batch variance (n / (n - 1) x), Gluon and Flax the biased one."""
    spec = make_spec(arch, **SMALL, dropout=0.0)
    tensors, x, y = random_canonical(spec), images(spec, 4), np.array([1, 2, 5, 8])
    updates = {}
    for name, fw in fws.items():
        net = loaded(fw, spec, tensors)
        fw.sgd_step(net, x, y, lr=0.1)
        updates[name] = {k: v - tensors[k] for k, v in fw.weights.to_canonical(net).items()}
    trained = [k for k in tensors if not k.endswith(("running_mean", "running_var"))]
    assert all(np.abs(updates["torch"][k]).max() > 0 for k in trained if not _cancels(spec, k))
    _assert_same_change(spec, {n: {k: u[k] for k in trained} for n, u in updates.items()}, f"{arch} SGD update")
    for k in tensors:
        if k.endswith("running_mean"):
            _assert_same_change(spec, {n: {k: u[k]} for n, u in updates.items()}, f"{arch} {k} update")
        elif k.endswith("running_var"):  # momentum 0.1: new = 0.9 old + 0.1 batch variance
            assert_close(updates["gluon"][k], updates["flax"][k], f"{arch} {k}: gluon vs flax")
            i = int(k[len("block")])  # block i sees (H, W) / 2^(i-1), over a batch of 4
            n = 4 * (spec.image_size[0] >> (i - 1)) * (spec.image_size[1] >> (i - 1))
            biased, unbiased = (updates[f][k] + 0.1 * tensors[k] for f in ("flax", "torch"))
            assert_close(unbiased, biased * n / (n - 1), f"{arch} {k}: torch's unbiased variance")


def test_round_trip_through_all_three_is_exact(fws):
    """torch -> Gluon -> Flax -> torch: every tensor comes back bit for bit (renames and transposes only)."""
    spec = make_spec("vgg11_bn", **SMALL)
    start = random_canonical(spec, seed=1)
    t = loaded(fws["torch"], spec, start)
    g = loaded(fws["gluon"], spec, fws["torch"].weights.to_canonical(t))
    f = loaded(fws["flax"], spec, fws["gluon"].weights.to_canonical(g))
    back = fws["torch"].weights.to_canonical(loaded(fws["torch"], spec, fws["flax"].weights.to_canonical(f)))
    assert list(back) == list(start)
    for k in start:
        assert np.array_equal(back[k], start[k]), k


# --- the check has teeth: a converter with one layout wrong is caught -----------------------


def _broken_flax(original, mistake):
    def converter(name, x, spec):
        if mistake == "fc1 flatten order" and name == "fc1.weight":
            return ("fc1", "kernel"), x.T  # (out, in) -> (in, out) but the columns left in (C, H, W) order
        path, value = original(name, x, spec)
        if mistake == "conv kernel H/W swapped" and value.ndim == 4:
            value = value.transpose(1, 0, 2, 3)
        return path, value

    return converter


@pytest.mark.parametrize("mistake", ["fc1 flatten order", "conv kernel H/W swapped"])
def test_a_wrong_converter_is_caught(fws, monkeypatch, mistake):
    import vgg_flax.weights as fw_weights

    spec = make_spec("vgg11", **dict(SMALL, image_size=64))  # square, so the broken shapes still fit
    tensors, x = random_canonical(spec), images(spec, 3)
    reference = fws["torch"].infer(loaded(fws["torch"], spec, tensors), x)
    assert_close(fws["flax"].infer(loaded(fws["flax"], spec, tensors), x), reference, "correct converter")
    monkeypatch.setattr(fw_weights, "_flax_one", _broken_flax(fw_weights._flax_one, mistake))
    wrong = fws["flax"].infer(loaded(fws["flax"], spec, tensors), x)
    with pytest.raises(AssertionError, match="max |difference|"):
        assert_close(wrong, reference, mistake)


# --- torchvision's VGG as the reference ---------------------------------------------------


def _torchvision_model(arch, ratio):
    """torchvision's VGG with its own `make_layers`, channels and hidden units divided by `ratio`,
    random weights (no download), biases and batch-norm statistics made non-trivial."""
    import torch
    from torchvision.models import vgg as tv

    letter, bn, _ = CONFIGS[arch]
    cfg = [v if v == "M" else v // ratio for v in tv.cfgs[letter]]
    torch.manual_seed(0)
    model = tv.VGG(tv.make_layers(cfg, batch_norm=bn), num_classes=1000 if ratio == 1 else 10)
    if ratio != 1:  # torchvision hard-codes 512 * 7 * 7 -> 4096 -> 4096; the same indices 0, 3, 6
        c, h = 512 // ratio, 4096 // ratio
        model.classifier = torch.nn.Sequential(
            torch.nn.Linear(c * 49, h),
            torch.nn.ReLU(True),
            torch.nn.Dropout(),
            torch.nn.Linear(h, h),
            torch.nn.ReLU(True),
            torch.nn.Dropout(),
            torch.nn.Linear(h, 10),
        )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.bias.normal_(0, 0.01, generator=g)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return model.eval()


def _torchvision_case(arch, ratio):
    """(our spec, canonical tensors from torchvision's state_dict, 224-px input, torchvision's logits)."""
    import torch

    from vgg_torch.weights import from_torchvision

    model = _torchvision_model(arch, ratio)
    spec = make_spec(
        arch,
        in_channels=3,
        num_classes=1000 if ratio == 1 else 10,
        image_size=224,
        width_ratio=ratio,
        scale_classifier=True,
    )
    x = images(spec, 1)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    return spec, from_torchvision(model.state_dict(), arch), x, expected


@pytest.mark.parametrize("arch", ["vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"])
def test_torchvision_reduced_width(fws, arch):
    """Every torchvision configuration (channels / 8) at 224 px, where its AdaptiveAvgPool2d((7, 7)) is the identity."""
    spec, tensors, x, expected = _torchvision_case(arch, 8)
    assert_close(fws["torch"].infer(loaded(fws["torch"], spec, tensors), x), expected, f"torchvision {arch}/8")


@pytest.mark.parametrize("arch", ["vgg11", "vgg11_bn"])
def test_torchvision_full_size_in_torch(fws, arch):
    spec, tensors, x, expected = _torchvision_case(arch, 1)
    assert_close(fws["torch"].infer(loaded(fws["torch"], spec, tensors), x), expected, f"torchvision {arch}")


@pytest.fixture(scope="module")
def torchvision_vgg11_bn():
    return _torchvision_case("vgg11_bn", 1)


@pytest.mark.parametrize("name", ["gluon", "flax"])
def test_torchvision_full_size_converted(fws, torchvision_vgg11_bn, name):
    """torchvision vgg11_bn (133M parameters) -> canonical -> Gluon / Flax, against torchvision's own logits."""
    spec, tensors, x, expected = torchvision_vgg11_bn
    assert_close(fws[name].infer(loaded(fws[name], spec, tensors), x), expected, f"torchvision vgg11_bn in {name}")
