"""Data parallelism with PyTorch's own engine: one process per device, started by torchrun,
`DistributedDataParallel` averaging the gradients in backward (NCCL on GPUs, gloo on CPUs).

    torchrun --standalone --nproc_per_node=2 -m vgg_torch.train ...   # two devices of this machine
    python -m vgg_torch.train --devices 2 ...                         # the same: starts torchrun itself

torchrun gives each process RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE (and MASTER_ADDR,
MASTER_PORT for `init_process_group`). Each process takes its part of every global batch (the
loader's `shard`); DDP's mean over processes of the per-process mean gradients is the gradient of
the mean over the global batch, so the update is the single-device one. Batch norm normalises
with each process's own batch statistics (no SyncBatchNorm).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from common import training
from common.errors import DeviceError, RunError


@dataclass(frozen=True)
class Context:
    devices: list  # what this process computes on (one device per process in PyTorch)
    world: int  # devices in the whole job: each global batch is cut into this many parts
    shard: tuple  # (this process's part, parts): common.data.Loader's shard
    primary: bool  # the one process that prints, writes reports and checkpoints
    describe: str  # for the reports, e.g. 'cpu x2 (DistributedDataParallel, gloo)'


def launched() -> bool:
    return "WORLD_SIZE" in os.environ  # torchrun (and every torch.distributed launcher) sets it


def launch(args, module: str, argv) -> bool:
    """--devices N outside torchrun: run `torchrun --standalone --nproc_per_node=N -m module argv`
    through torch's own launcher and wait for it. False when there is nothing to launch."""
    if launched() or (args.devices or 1) == 1:
        return False
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(["--standalone", f"--nproc_per_node={args.devices}", "-m", module, *argv])
    except ChildFailedError as e:  # each process has printed its own error; pass its exit code on
        code = next(iter(e.failures.values())).exitcode or 1
        raise RunError(
            f"--devices {args.devices}: a process ended with exit code {code} (its error is above)", code=code
        ) from None
    return True


def setup(args) -> Context:
    """Join torchrun's process group (if launched) and pick this process's device."""
    gpu = training.pick_device(args.device, torch.cuda.is_available(), "torch")
    if not launched():
        if (args.devices or 1) > 1:
            raise DeviceError("--devices N > 1 in PyTorch needs torchrun (vgg_torch.train's main starts it)")
        dev = torch.device("cuda:0" if gpu else "cpu")
        return Context([dev], 1, (0, 1), True, str(dev))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    if args.devices and args.devices != local_world:
        raise DeviceError(
            f"--devices {args.devices}, but torchrun started {local_world} processes on this machine "
            "(--nproc_per_node): give one or the other"
        )
    if args.batch_size % world:
        raise RunError(
            f"--batch-size {args.batch_size} (the global batch) does not split evenly over {world} "
            f"processes; use a multiple of {world}"
        )
    if gpu and local_rank >= torch.cuda.device_count():
        raise DeviceError(
            f"torchrun started {local_world} processes on this machine but it has "
            f"{torch.cuda.device_count()} GPUs; lower --nproc_per_node"
        )
    dev = torch.device(f"cuda:{local_rank}" if gpu else "cpu")
    if gpu:
        torch.cuda.set_device(dev)
    backend = "nccl" if gpu else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)  # env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
    return Context([dev], world, (rank, world), rank == 0, f"{dev.type} x{world} (DistributedDataParallel, {backend})")


def prepare(dp: Context, net):
    """The module to train: DDP around `net` when there are several processes. Checkpoints and
    evaluation keep using `net` itself (no 'module.' prefix, no collective in evaluation)."""
    if dp.world == 1:
        return net
    return DistributedDataParallel(net, device_ids=[dp.devices[0]] if dp.devices[0].type == "cuda" else None)


def shard(dp: Context, *arrays):
    """This process's rows of a global batch (NumPy; the loader gives each process its part) ->
    tensors on its device."""
    return tuple(torch.from_numpy(a).to(dp.devices[0], non_blocking=True) for a in arrays)


def total(*values) -> list[float]:
    """Each value summed over all processes (itself when there is one): reports count every shard."""
    if not (dist.is_available() and dist.is_initialized()):
        return [float(v) for v in values]
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=dev).reshape(()) for v in values])
    dist.all_reduce(t)
    return t.tolist()


def is_primary() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def cleanup(*, together: bool = True) -> None:
    """Leave the process group. together: after a finished run, wait for every process first, or
    one may tear down its gloo group under another and abort at exit (benchmarks/README.md).
    After an error, leave at once: the others may be in the middle of a step, where a barrier
    would not match."""
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()
