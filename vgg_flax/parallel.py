"""Data parallelism with JAX's own engine, `jax.sharding`: one process drives all the devices of
its machine; a `Mesh` over them with one axis, 'data'; every batch sharded along it, the model
and optimiser state replicated. The train step stays the same `nnx.jit` function: compiled for
these shardings, XLA runs each device's part and inserts the all-reduce that the batch mean
needs, so the update is the single-device one.

    python -m vgg_flax.train --devices 2 ...       # two devices of this machine

Several machines (or several processes): one process per machine, each started with
JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID in its environment
(or under SLURM / Open MPI, where JAX finds the last two itself); `setup` then calls
`jax.distributed.initialize()` and the mesh spans every process's devices. Each process loads
its own part of each global batch (the loader's `shard`).

Batch norm differs from the other two frameworks here: the program is the global one, so its
batch statistics are taken over the whole global batch (synchronised, as on one device).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from common import training
from common.errors import DeviceError, RunError

AXIS = "data"


@dataclass(frozen=True)
class Context:
    devices: list  # this process's devices (the mesh holds every process's)
    world: int  # devices in the whole job: each global batch is cut into this many parts
    shard: tuple  # (this process's part, parts): common.data.Loader's shard
    primary: bool  # the one process that prints, writes reports and checkpoints
    describe: str  # for the reports, e.g. 'cpu:0 x2 (jax.sharding mesh)'
    batch: jax.sharding.Sharding  # where a batch goes: split along its first axis
    replicated: jax.sharding.Sharding  # where parameters and optimiser state go: on every device


def launched() -> bool:
    """Several processes (machines): the coordinator's environment is set."""
    return any(k in os.environ for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES"))


def _env_int(name):
    return int(os.environ[name]) if name in os.environ else None


def setup(args) -> Context:
    """Join the other processes (if any), pick the devices, build the mesh."""
    if launched() and not jax.distributed.is_initialized():
        # Before any other JAX call: the devices of every process must be known to all.
        jax.distributed.initialize(num_processes=_env_int("JAX_NUM_PROCESSES"), process_id=_env_int("JAX_PROCESS_ID"))
    try:
        gpus = jax.local_devices(backend="gpu")
    except RuntimeError:  # no GPU backend installed or none visible
        gpus = []
    platform = "gpu" if training.pick_device(args.device, bool(gpus), "JAX") else "cpu"
    local = jax.local_devices(backend=platform)
    n = args.devices or (len(local) if jax.process_count() > 1 else 1)
    if n > len(local):
        hint = (
            " (on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N before starting makes N host devices)"
            if platform == "cpu"
            else ""
        )
        raise DeviceError(f"--devices {n}: JAX sees {len(local)} {platform} device(s) on this machine{hint}")
    procs = jax.process_count()
    by_process = [[d for d in jax.devices(platform) if d.process_index == p][:n] for p in range(procs)]
    world = sum(map(len, by_process))
    if args.batch_size % world:
        raise RunError(
            f"--batch-size {args.batch_size} (the global batch) does not split evenly over {world} "
            f"devices; use a multiple of {world}"
        )
    mine = by_process[jax.process_index()]
    if world == 1:
        one = jax.sharding.SingleDeviceSharding(mine[0])
        return Context(mine, 1, (0, 1), True, f"{platform}:{mine[0].id}", one, one)
    mesh = Mesh(np.array([d for ds in by_process for d in ds]), (AXIS,))
    where = f", {procs} processes" if procs > 1 else ""
    return Context(
        mine,
        world,
        (jax.process_index(), procs),
        jax.process_index() == 0,
        f"{platform}:{local[0].id} x{world} (jax.sharding mesh{where})",
        NamedSharding(mesh, P(AXIS)),
        NamedSharding(mesh, P()),
    )


def prepare(dp: Context, *nodes) -> None:
    """Commit every array of the NNX objects (model, optimiser) to where the step runs: its one
    device, or every device of the mesh. On one device too: arrays made without a device_put are
    uncommitted, so the jitted step would compile once for them beside the committed batch, and
    again on step 2 for the committed state that step 1 returned."""
    for node in nodes:
        nnx.update(node, jax.tree_util.tree_map(lambda x: _replicate(dp, x), nnx.state(node)))


def _replicate(dp: Context, x):
    if jax.process_count() == 1:
        return jax.device_put(x, dp.replicated)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # typed keys travel as their uint32 data
        return jax.random.wrap_key_data(_replicate(dp, jax.random.key_data(x)), impl=jax.random.key_impl(x))
    # device_put cannot reach other processes' devices: each process places its own copy
    v = np.asarray(x)
    return jax.make_array_from_callback(v.shape, dp.replicated, lambda index: v[index])


def shard(dp: Context, *arrays):
    """This process's rows of a global batch (NumPy) -> global jax.Arrays split over the mesh."""
    if jax.process_count() == 1:
        return tuple(jax.device_put(a, dp.batch) for a in arrays)
    return tuple(jax.make_array_from_process_local_data(dp.batch, a) for a in arrays)


def local_rows(dp: Context, array) -> np.ndarray:
    """The rows of a batch-sharded result that belong to this process's part of the batch."""
    if jax.process_count() == 1:
        return np.asarray(array)
    return np.asarray(multihost_utils.global_array_to_host_local_array(array, dp.batch.mesh, P(AXIS)))


def total(*values) -> list[float]:
    """Each value summed over all processes (itself when there is one)."""
    v = np.asarray(values, np.float64)
    if jax.process_count() > 1:
        v = np.asarray(multihost_utils.process_allgather(v)).sum(0)
    return v.tolist()


def is_primary() -> bool:
    return jax.process_index() == 0


def cleanup() -> None:
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()
