"""Fashion-MNIST test accuracy of canonical weights from any framework, in MXNet Gluon:

    python -m vgg_gluon.evaluate --weights trained_in_torch.safetensors
        [--data-dir D] [--batch-size N] [--device auto|cpu|gpu]

The model is rebuilt from the spec in the file's metadata as the train command builds it
(vgg_gluon.train.Backend); common.evaluate does the flags, the loop and the report.
"""

from __future__ import annotations

from vgg_gluon.train import Backend

import mxnet as mx

from common.cli import main_guard
from common.evaluate import evaluate_main


def main(argv=None):
    with main_guard():
        evaluate_main("vgg_gluon.evaluate", argv, framework=f"MXNet Gluon {mx.__version__}", backend=Backend)


if __name__ == "__main__":
    main()
