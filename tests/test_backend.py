"""The Backend contract (common.contract.Backend): the three frameworks' Backends implement every
member it declares, with its arguments; one that lacks a member is refused before a run starts;
`predict` gives the same logits in the three; the evaluate commands pick devices by the train
command's rule."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest
from frameworks import SAMPLE, SMALL, random_canonical

from common import FRAMEWORKS, contract, training
from common.cli import parse_train_args
from common.data import Loader, load_fashion_mnist
from common.errors import DeviceError
from common.weights import expected_canonical, save_weights, spec_metadata

FLAGS = [*SMALL, "--batch-size", "8", "--dropout", "0", "--device", "cpu", "--data-dir", str(SAMPLE), "--no-progress"]
FLAGS += ["--epochs", "1"]
# What common.training.run reads of a backend, written out by hand: the Protocol must declare these.
CONTRACT = (
    "framework device versions parameters threads primary shard "
    "start_epoch set_lr canonical load_canonical train_step fetch predict total "
    "save_checkpoint load_checkpoint export"
).split()
METHODS = CONTRACT[7:]


def config(*flags):
    return contract.TrainConfig.from_args(parse_train_args([*FLAGS, *flags]))


@pytest.fixture(scope="module")
def backends():
    return {fw: importlib.import_module(f"vgg_{fw}.train").Backend(config()) for fw in FRAMEWORKS}


def test_the_protocol_declares_the_contract():
    assert sorted(contract.backend_members()) == sorted(CONTRACT)
    for name in METHODS:
        assert getattr(contract.Backend, name).__doc__, f"Backend.{name} has no docstring"


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_each_backend_implements_every_member(fw, backends):
    b = backends[fw]
    assert [m for m in CONTRACT if not hasattr(b, m)] == []
    assert isinstance(b, contract.Backend)
    contract.check_backend(b)
    assert type(b).framework == fw and isinstance(b.primary, bool) and b.shard == (0, 1)
    for name in METHODS:  # the Protocol's arguments, by name
        want = list(inspect.signature(getattr(contract.Backend, name)).parameters)
        assert list(inspect.signature(getattr(type(b), name)).parameters) == want, f"{fw} Backend.{name}"


def _stub(missing=None):
    """A class with every member of the contract but `missing`."""
    members = {m: (lambda self, *a: None) for m in METHODS}
    members.update(framework="torch", device="cpu", versions={}, parameters=0, threads="", primary=True, shard=(0, 1))
    members.pop(missing, None)
    return type("Stub", (), {**members, "__init__": lambda self, config: None})


def test_a_backend_with_every_member_is_accepted():
    assert isinstance(_stub()(None), contract.Backend)
    contract.check_backend(_stub()(None))


@pytest.mark.parametrize("missing", CONTRACT[1:])  # without framework, run cannot even name its --out
def test_a_backend_lacking_a_member_is_refused(missing):
    stub = _stub(missing)(None)
    assert not isinstance(stub, contract.Backend)
    with pytest.raises(TypeError, match=rf"lacks {missing}$"):
        contract.check_backend(stub)


def test_run_refuses_a_backend_without_primary_before_writing(tmp_path):
    """No silent default: a backend that does not say whether it is the primary process is an error."""
    with pytest.raises(TypeError, match="lacks primary"):
        training.run(config("--out", str(tmp_path)), _stub("primary"))
    assert list(tmp_path.iterdir()) == []


def test_predict_gives_the_same_logits_in_the_three(backends):
    """Backend.predict (vgg_X.train.predict) of the same canonical weights and batch, in inference
    mode: the three agree to float32 rounding, and so do their classes."""
    spec = config().spec
    tensors = random_canonical(spec, seed=1)
    assert set(tensors) == set(expected_canonical(spec))
    data = load_fashion_mnist(SAMPLE)
    x, _ = next(iter(Loader(data.test_images[:8], data.test_labels[:8], batch_size=8, resize=32, shuffle=False)))
    out = {}
    for fw, b in backends.items():
        b.load_canonical(tensors)
        out[fw] = b.predict(x)
        assert out[fw].dtype == np.float32 and out[fw].shape == (8, 10), fw
    scale = np.abs(out["torch"]).max()
    assert scale > 0.1  # logits that depend on the input, not all zero
    for fw in ("gluon", "flax"):
        assert np.abs(out[fw] - out["torch"]).max() <= 1e-4 * scale, fw
    assert np.abs(out["torch"] - out["torch"][0]).max() > 1e-2 * scale  # each image its own logits
    assert (out["gluon"].argmax(1) == out["torch"].argmax(1)).all() and (
        out["flax"].argmax(1) == out["torch"].argmax(1)
    ).all()


def _hide_gpus(fw, monkeypatch):
    if fw == "torch":
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    elif fw == "gluon":
        import vgg_gluon  # noqa: F401  (restores np.bool before mxnet is imported)

        import mxnet as mx

        monkeypatch.setattr(mx.context, "num_gpus", lambda: 0)
    else:
        import jax

        local = jax.local_devices

        def cpu_only(*args, backend=None, **kwargs):
            if backend == "gpu":
                raise RuntimeError("no GPU (hidden by the test)")
            return local(*args, backend=backend, **kwargs)

        monkeypatch.setattr(jax, "local_devices", cpu_only)


@pytest.mark.parametrize("fw, name", [("torch", "torch"), ("gluon", "MXNet"), ("flax", "JAX")])
def test_evaluate_picks_devices_by_the_train_rule(fw, name, monkeypatch, tmp_path, capsys):
    """`vgg_X.evaluate --device gpu` without a GPU fails as the train command does; auto falls back to the CPU."""
    spec = config().spec
    save_weights(tmp_path / "w.safetensors", random_canonical(spec), spec_metadata(spec))
    main = importlib.import_module(f"vgg_{fw}.evaluate").main
    flags = ["--weights", str(tmp_path / "w.safetensors"), "--data-dir", str(SAMPLE), "--device"]
    _hide_gpus(fw, monkeypatch)
    with pytest.raises(DeviceError) as e:
        importlib.import_module(f"vgg_{fw}.train").Backend(config("--device", "gpu"))
    assert str(e.value) == (
        f"--device gpu: no GPU is visible to {name}. Install its GPU build (docs/gpus.md) or use --device cpu"
    )
    with pytest.raises(SystemExit) as exit:
        main([*flags, "gpu"])
    assert exit.value.code == 2 and capsys.readouterr().err == f"error: {e.value}\n"
    for requested in ("auto", "cpu"):
        main([*flags, requested])
        assert " on cpu" in capsys.readouterr().out.splitlines()[0].lower()


def test_the_flax_step_compiles_once():
    """The first step compiles the jitted step; the ones after reuse it. Arrays that no device_put
    committed (the freshly built state) make step 1 compile for them, and step 2 compile again for
    the committed state step 1 returned: a compilation that the train script's examples/s, which
    leave out only step 1, would count as training time (vgg_flax.parallel.prepare commits them)."""
    import jax
    from jax._src import monitoring

    from vgg_flax.train import Backend

    backend = Backend(config())
    x, y = np.random.default_rng(0).random((8, 1, 32, 32), np.float32), np.arange(8) % 10
    backend.fetch(backend.train_step(x, y))
    compiled = []

    def listen(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for _ in range(2):
            backend.fetch(backend.train_step(x, y))
    finally:
        monitoring._unregister_event_duration_listener_by_callback(listen)
    assert compiled == [], f"steps 2 and 3 compiled {len(compiled)} time(s)"
