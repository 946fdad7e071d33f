"""Fashion-MNIST test accuracy of canonical weights from any framework, in MXNet Gluon:

    python -m vgg_gluon.evaluate --weights trained_in_torch.safetensors
        [--data-dir D] [--batch-size N] [--device auto|cpu|gpu]

The model is rebuilt from the spec in the file's metadata (common.evaluate does the flags and the report).
"""

from __future__ import annotations

from vgg_gluon.model import vgg
from vgg_gluon.train import predict
from vgg_gluon.weights import from_canonical

import mxnet as mx

from common import training
from common.cli import main_guard
from common.evaluate import evaluate_main


def pick_device(requested: str) -> mx.Context:
    """--device auto|cpu|gpu: the rule and the DeviceError of the train command (common.training.pick_device)."""
    return mx.gpu(0) if training.pick_device(requested, mx.context.num_gpus() > 0, "MXNet") else mx.cpu()


def load_model(spec, tensors, device, cpu_workarounds=True):
    # cpu_workarounds: Flax's (vgg_flax.xla_cpu); oneDNN needs none
    net = from_canonical(vgg(spec), tensors, ctx=device)
    net.hybridize(static_alloc=True)
    return net


def main(argv=None):
    with main_guard():
        evaluate_main(
            "vgg_gluon.evaluate",
            argv,
            framework=f"MXNet Gluon {mx.__version__}",
            pick_device=pick_device,
            load_model=load_model,
            predict=predict,
        )


if __name__ == "__main__":
    main()
