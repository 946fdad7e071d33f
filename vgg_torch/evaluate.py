"""Fashion-MNIST test accuracy of canonical weights from any framework, in PyTorch:

    python -m vgg_torch.evaluate --weights trained_in_flax.safetensors
        [--data-dir D] [--batch-size N] [--device auto|cpu|gpu]

The model is rebuilt from the spec in the file's metadata as the train command builds it
(vgg_torch.train.Backend); common.evaluate does the flags, the loop and the report.
"""

from __future__ import annotations

import torch

from common.cli import main_guard
from common.evaluate import evaluate_main
from vgg_torch.train import Backend


def main(argv=None):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 as the other two
    with main_guard():
        evaluate_main("vgg_torch.evaluate", argv, framework=f"PyTorch {torch.__version__}", backend=Backend)


if __name__ == "__main__":
    main()
