"""Fashion-MNIST test accuracy of canonical weights from any framework, in Flax NNX:

    python -m vgg_flax.evaluate --weights trained_in_torch.safetensors
        [--data-dir D] [--batch-size N] [--device auto|cpu|gpu]

The model is rebuilt from the spec in the file's metadata (common.evaluate does the flags and the report).
"""

from __future__ import annotations

import flax
import jax
import numpy as np
from flax import nnx

from common.cli import main_guard
from common.evaluate import evaluate_main
from common.training import DeviceError
from vgg_flax import xla_cpu
from vgg_flax.model import vgg
from vgg_flax.weights import from_canonical


def pick_device(requested: str):
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if requested == "gpu" and not gpus:
        raise DeviceError("--device gpu: JAX sees no GPU (jax.devices() lists none); use --device cpu")
    return gpus[0] if requested != "cpu" and gpus else jax.devices("cpu")[0]


def load_model(spec, tensors, device, cpu_workarounds=True):
    jax.config.update("jax_default_matmul_precision", "float32")  # no TF32 on GPUs: float32 as the other two
    with jax.default_device(device):
        model = from_canonical(vgg(spec), tensors)
    if cpu_workarounds:
        xla_cpu.apply(model, platform=device.platform)
    model.eval()
    return model


@nnx.jit
def _predict(model, x):
    return model(x).argmax(-1)


def predict(model, x, device):
    # NCHW from the loader, NHWC for Flax: the one transpose
    return np.asarray(_predict(model, jax.device_put(np.transpose(x, (0, 2, 3, 1)), device)))


def main(argv=None):
    with main_guard():
        evaluate_main(
            "vgg_flax.evaluate",
            argv,
            framework=f"Flax {flax.__version__}",
            pick_device=pick_device,
            load_model=load_model,
            predict=predict,
        )


if __name__ == "__main__":
    main()
