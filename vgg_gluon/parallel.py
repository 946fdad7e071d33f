"""Data parallelism with MXNet's own engine, as the gluonbook's multi-GPU chapter does it: one
process drives several contexts (`mx.gpu(0)`, `mx.gpu(1)`, ...), every batch is cut with
`gluon.utils.split_and_load`, each context runs forward and backward on its part, and the
Trainer's KVStore sums the gradients over contexts ('device') and over machines ('dist_sync').
`trainer.step(global batch)` divides that sum, so the update is the single-device one.

    python -m vgg_gluon.train --devices 2 ...           # two contexts of this machine, kvstore 'device'

Several machines: MXNet's launcher (`tools/launch.py` in the mxnet package, with the
`dmlc_tracker` package) starts a scheduler, servers and workers and gives them the DMLC_*
environment (DMLC_ROLE, DMLC_PS_ROOT_URI, DMLC_PS_ROOT_PORT, DMLC_NUM_SERVER, DMLC_NUM_WORKER);
a worker (DMLC_ROLE=worker) then uses kvstore 'dist_sync' and loads its own part of each global
batch (the loader's `shard`). The update runs on every worker (update_on_kvstore=False): the
servers only add gradients, and each worker keeps the optimiser state its checkpoint saves.
`prepare` has every worker pull rank 0's initial weights, and waits for them, before the first step.

Batch norm normalises with each context's own batch statistics (no synchronised batch norm).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import vgg_gluon  # noqa: F401  (restores np.bool before mxnet is imported)

import mxnet as mx
from mxnet import gluon

from common import training
from common.errors import DeviceError, RunError

_kvstore = None  # the dist KVStore of a launched worker, which `total` also sums with
TOTAL_KEY = 1 << 30  # for `total`: beyond the Trainer's keys (0 .. #parameters - 1)
_total_ready = False


@dataclass(frozen=True)
class Context:
    devices: list  # this process's contexts: every batch is split over them
    world: int  # devices in the whole job: each global batch is cut into this many parts
    shard: tuple  # (this worker's part, workers): common.data.Loader's shard
    primary: bool  # the one process that prints, writes reports and checkpoints
    describe: str  # for the reports, e.g. 'cpu(0) x2 (kvstore device)'
    kvstore: object  # for gluon.Trainer: None (one device), 'device', or a dist_sync KVStore


def launched() -> bool:
    return os.environ.get("DMLC_ROLE") == "worker"  # set by tools/launch.py (dmlc_tracker)


def setup(args) -> Context:
    global _kvstore
    gpu = training.pick_device(args.device, mx.context.num_gpus() > 0, "MXNet")
    n = args.devices or 1
    if gpu and n > mx.context.num_gpus():
        raise DeviceError(f"--devices {n}: MXNet sees {mx.context.num_gpus()} GPU(s)")
    devices = [mx.gpu(i) if gpu else mx.cpu(i) for i in range(n)]
    kv, rank, workers = ("device" if n > 1 else None), 0, 1
    if launched():
        kv = _kvstore = mx.kv.create("dist_sync")
        rank, workers = kv.rank, kv.num_workers
    world = n * workers
    if args.batch_size % world:
        raise RunError(
            f"--batch-size {args.batch_size} (the global batch) does not split evenly over {world} "
            f"devices; use a multiple of {world}"
        )
    name = str(devices[0])
    if world > 1:
        name += f" x{world} (kvstore {f'dist_sync, worker {rank} of {workers}' if launched() else 'device'})"
    return Context(devices, world, (rank, workers), rank == 0, name, kv)


def prepare(dp: Context, trainer) -> None:
    """Several workers: initialise the Trainer's KVStore keys now, and wait until every worker holds
    rank 0's weights, before the first gradient is pushed (MXNet 1.9.1, the last release, has no public
    call for it: these are the two that trainer.step runs lazily at the first step)."""
    if _kvstore is None:
        return  # one process: the 'device' KVStore orders its own init, pull and push
    trainer._init_kvstore()
    trainer._init_params()  # per key: rank 0 pushes its weights, a barrier, then an asynchronous pull
    # Nothing orders that pull before the key's first push: a late pull got the server's sum of both
    # workers' gradients, which the worker then took for its weights (one tensor 1.0 of its scale off).
    mx.nd.waitall()
    if trainer._params_to_init:  # a parameter without a shape would still be initialised at the first step
        raise RuntimeError(f"parameters without a shape: {[p.name for p in trainer._params_to_init]}")


def shard(dp: Context, *arrays):
    """This worker's rows of a global batch (NumPy) -> for each array, one NDArray per context."""
    return tuple(gluon.utils.split_and_load(a, dp.devices) for a in arrays)


def total(*values) -> list[float]:
    """Each value summed over all workers (itself when there is one), through the KVStore."""
    global _total_ready
    if _kvstore is None or _kvstore.num_workers == 1:
        return [float(v) for v in values]
    v = mx.nd.array(values, dtype="float64")
    if not _total_ready:  # a KVStore key is initialised once, by every worker
        _kvstore.init(TOTAL_KEY, mx.nd.zeros(len(values), dtype="float64"))
        _total_ready = True
    _kvstore.pushpull(TOTAL_KEY, v, out=v)  # dist_sync without an optimiser on the servers: the sum
    return v.asnumpy().tolist()


def is_primary() -> bool:
    return _kvstore is None or _kvstore.rank == 0


def cleanup() -> None:
    pass  # the KVStore ends with the process; the launcher stops the servers
