"""Fashion-MNIST test accuracy of canonical weights from any framework, in Flax NNX:

    python -m vgg_flax.evaluate --weights trained_in_torch.safetensors
        [--data-dir D] [--batch-size N] [--device auto|cpu|gpu]

The model is rebuilt from the spec in the file's metadata (common.evaluate does the flags and the report).
"""

from __future__ import annotations

import flax
import jax

from common import training
from common.cli import main_guard
from common.evaluate import evaluate_main
from vgg_flax import xla_cpu
from vgg_flax.model import vgg
from vgg_flax.train import predict
from vgg_flax.weights import from_canonical


def pick_device(requested: str) -> jax.Device:
    """--device auto|cpu|gpu: the rule and the DeviceError of the train command (common.training.pick_device)."""
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    return gpus[0] if training.pick_device(requested, bool(gpus), "JAX") else jax.devices("cpu")[0]


def load_model(spec, tensors, device, cpu_workarounds=True):
    jax.config.update("jax_default_matmul_precision", "float32")  # no TF32 on GPUs: float32 as the other two
    with jax.default_device(device):
        model = from_canonical(vgg(spec), tensors)
    if cpu_workarounds:
        xla_cpu.apply(model, platform=device.platform)
    model.eval()
    return model


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
