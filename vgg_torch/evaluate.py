"""Fashion-MNIST test accuracy of canonical weights from any framework, in PyTorch:

    python -m vgg_torch.evaluate --weights trained_in_flax.safetensors
        [--data-dir D] [--batch-size N] [--device auto|cpu|gpu]

The model is rebuilt from the spec in the file's metadata (common.evaluate does the flags and the report).
"""

from __future__ import annotations

import torch

from common import training
from common.cli import main_guard
from common.evaluate import evaluate_main
from vgg_torch.model import vgg
from vgg_torch.train import predict
from vgg_torch.weights import from_canonical


def pick_device(requested: str) -> torch.device:
    """--device auto|cpu|gpu: the rule and the DeviceError of the train command (common.training.pick_device)."""
    return torch.device("cuda" if training.pick_device(requested, torch.cuda.is_available(), "torch") else "cpu")


def load_model(spec, tensors, device, cpu_workarounds=True) -> torch.nn.Module:
    # cpu_workarounds: Flax's (vgg_flax.xla_cpu); oneDNN needs none
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 as the other two
    return from_canonical(vgg(spec).to(device), tensors).eval()


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
