"""Fashion-MNIST test accuracy of canonical weights from any framework, in PyTorch:

    python -m vgg_torch.evaluate --weights trained_in_flax.safetensors
        [--data-dir D] [--batch-size N] [--device auto|cpu|gpu]

The model is rebuilt from the spec in the file's metadata (common.evaluate does the flags and the report).
"""

from __future__ import annotations

import torch

from common.cli import main_guard
from common.evaluate import evaluate_main
from common.training import DeviceError
from vgg_torch.model import vgg
from vgg_torch.weights import from_canonical


def pick_device(requested: str) -> torch.device:
    if requested == "gpu" and not torch.cuda.is_available():
        raise DeviceError("--device gpu: PyTorch sees no GPU (torch.cuda.is_available() is False); use --device cpu")
    return torch.device("cuda" if requested != "cpu" and torch.cuda.is_available() else "cpu")


def load_model(spec, tensors, device, cpu_workarounds=True) -> torch.nn.Module:
    # cpu_workarounds: Flax's (vgg_flax.xla_cpu); oneDNN needs none
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 as the other two
    return from_canonical(vgg(spec).to(device), tensors).eval()


@torch.inference_mode()
def predict(net, x, device):
    return net(torch.from_numpy(x).to(device)).argmax(1).cpu().numpy()


def main(argv=None):
    with main_guard():
        evaluate_main(
            "vgg_torch.evaluate",
            argv,
            framework=f"PyTorch {torch.__version__}",
            pick_device=pick_device,
            load_model=load_model,
            predict=predict,
        )


if __name__ == "__main__":
    main()
