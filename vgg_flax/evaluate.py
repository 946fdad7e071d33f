"""Fashion-MNIST test accuracy of canonical weights from any framework, in Flax NNX:

    python -m vgg_flax.evaluate --weights trained_in_torch.safetensors
        [--data-dir D] [--batch-size N] [--device auto|cpu|gpu]

The model is rebuilt from the spec in the file's metadata as the train command builds it
(vgg_flax.train.Backend, with vgg_flax.xla_cpu on a CPU unless --no-cpu-workarounds);
common.evaluate does the flags, the loop and the report.
"""

from __future__ import annotations

import flax
import jax

from common.cli import main_guard
from common.evaluate import evaluate_main
from vgg_flax.train import Backend


def main(argv=None):
    jax.config.update("jax_default_matmul_precision", "float32")  # no TF32 on GPUs: float32 as the other two
    with main_guard():
        evaluate_main("vgg_flax.evaluate", argv, framework=f"Flax {flax.__version__}", backend=Backend)


if __name__ == "__main__":
    main()
