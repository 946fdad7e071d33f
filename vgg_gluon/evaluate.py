"""Fashion-MNIST test accuracy of canonical weights from any framework, in MXNet Gluon:

    python -m vgg_gluon.evaluate --weights trained_in_torch.safetensors
        [--data-dir D] [--batch-size N] [--device auto|cpu|gpu]

The model is rebuilt from the spec in the file's metadata (common.evaluate does the flags and the report).
"""

from __future__ import annotations

from vgg_gluon.model import vgg
from vgg_gluon.weights import from_canonical

import mxnet as mx

from common.cli import main_guard
from common.evaluate import evaluate_main
from common.training import DeviceError


def pick_device(requested: str) -> mx.Context:
    gpus = mx.context.num_gpus()
    if requested == "gpu" and not gpus:
        raise DeviceError("--device gpu: MXNet sees no GPU (mx.context.num_gpus() is 0); use --device cpu")
    return mx.gpu(0) if requested != "cpu" and gpus else mx.cpu()


def load_model(spec, tensors, device, cpu_workarounds=True):
    # cpu_workarounds: Flax's (vgg_flax.xla_cpu); oneDNN needs none
    net = from_canonical(vgg(spec), tensors, ctx=device)
    net.hybridize(static_alloc=True)
    return net


def predict(net, x, device):
    # outside autograd.record(): inference mode (no dropout, running statistics)
    return net(mx.nd.array(x, ctx=device)).argmax(axis=1).asnumpy()


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
