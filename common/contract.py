"""The contract between the shared training loop (common.training) and the three frameworks: the
flags a run takes (TrainConfig), what a framework implements (Backend), and the flags that --resume
holds fixed (RESUME_KEYS). No framework is imported here.

`Backend` below is the contract, in code: each framework's `vgg_X.train.Backend` owns the model,
the optimiser and the device and implements every member it declares; `common.training.run` reads
nothing else. The split follows Keras 3, which declares its trainer's methods once
(keras/src/trainers/trainer.py) and implements them per backend (keras/src/backend/{torch,jax}/trainer.py).
Keras shares that contract and the callbacks, and each backend keeps its own fit loop; here the loop
itself is shared too, so a backend is only the few calls a loop makes into a framework.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from .arch import VGGSpec

# Flags that define the run's arithmetic: --resume refuses to continue with different ones.
RESUME_KEYS = (
    "arch",
    "width_ratio",
    "scale_classifier",
    "dropout",
    "resize",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "normalize",
    "pixels",
    "init",
    "seed",
    "max_steps",
    "init_from",
    "init_partial",
    "weight_decay",
    "decay_all",
    "lr_schedule",
    "warmup_epochs",
    "lr_step_epochs",
    "lr_factor",
    "plateau_patience",
    "augment",
    "precision",
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every training flag (common.cli.add_train_args), built once from the parsed command line:
    `TrainConfig.from_args(common.cli.parse_train_args(argv))`. No defaults here: the flags
    define them, once."""

    arch: object
    width_ratio: int
    scale_classifier: bool
    in_channels: int
    num_classes: int
    dropout: float
    preset: str | None
    resize: int
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    normalize: bool
    pixels: str
    init: str
    seed: int
    device: str
    devices: int | None
    data_dir: str | None
    max_steps: int | None
    out: str | None
    resume: bool
    overwrite: bool
    compile: bool
    cpu_workarounds: bool
    progress: bool | None
    init_from: str | None
    init_partial: bool
    weight_decay: float
    decay_all: bool
    lr_schedule: str
    warmup_epochs: float
    lr_step_epochs: int
    lr_factor: float
    plateau_patience: int
    augment: bool
    precision: str
    spec: VGGSpec
    """The model that the flags above describe (common.cli.model_spec), made once when they are
    parsed; vgg_X.model.build(config) builds it. Not a flag: metrics.json's "config" leaves it out."""

    @classmethod
    def from_args(cls, args) -> TrainConfig:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def as_dict(self) -> dict:
        """metrics.json's "config": the flags, tuples as lists, as they come back from disk."""
        flags = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "spec"}
        return json.loads(json.dumps(flags, default=list))


@runtime_checkable
class Backend(Protocol):
    """What `run` drives, one per framework (vgg_torch.train.Backend, vgg_gluon.train.Backend,
    vgg_flax.train.Backend), built as `Backend(config)`. Batches are the loader's NumPy NCHW float32
    images and int64 labels. Data parallelism: each process builds one; only the primary prints and
    writes, each trains on part shard[0] of shard[1] of every global batch, and fetch and evaluate
    return totals over all parts."""

    framework: ClassVar[str]
    """'torch', 'gluon' or 'flax': metrics.json's "framework" and the default --out, runs/<framework>."""
    device: str
    """Where it runs, for the reports (e.g. 'cuda:0', 'cpu:0 x2 (jax.sharding mesh)')."""
    versions: dict[str, str]
    """The framework's package versions, for the reports (e.g. {'torch': '2.14.1'})."""
    parameters: int
    """The model's trainable parameter count."""
    threads: str
    """How many threads the framework computes on, and what set that, for the reports."""
    primary: bool
    """True in the one process that prints and writes the run's files (every process, on one device)."""
    shard: tuple[int, int]
    """(this process's part, parts): the loaders' shard of every global batch ((0, 1): the whole batch)."""

    def start_epoch(self, epoch: int) -> None:
        """Training mode, and dropout reseeded from (config.seed, epoch) alone (epoch_seed)."""

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next train_step (common.recipe.learning_rate)."""

    def canonical(self) -> dict[str, np.ndarray]:
        """The model's weights as canonical NumPy tensors (vgg_X.weights.to_canonical)."""

    def load_canonical(self, tensors: dict[str, np.ndarray]) -> None:
        """Set the model's weights from canonical tensors, every name and shape checked (--init-from)."""

    def train_step(self, x: np.ndarray, y: np.ndarray) -> object:
        """One update on this process's part of a batch; returns its (summed loss, #correct) unread on the device."""

    def fetch(self, out: object) -> tuple[float, int]:
        """Wait for a train_step's result: (summed loss, #correct) over every process's part."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float32 NumPy logits of an NCHW batch in inference mode (vgg_X.train.predict; this process's rows)."""

    def total(self, *values: float) -> list[float]:
        """Each value summed over every process (itself in one): counts that each process made of its part."""

    def save_checkpoint(self, folder: Path, epoch: int) -> None:
        """Write model, optimiser and RNG state into the (empty, temporary) folder; Run renames it into place."""

    def load_checkpoint(self, folder: Path) -> int:
        """Restore what save_checkpoint wrote and return its epoch; CheckpointError if it does not fit."""

    def export(self, path: Path) -> None:
        """The weights alone as canonical safetensors (vgg_X.weights.save): model.safetensors."""


def backend_members() -> tuple[str, ...]:
    """Every member that the Backend protocol declares: its attributes, then its methods."""
    methods = [n for n, v in vars(Backend).items() if callable(v) and not n.startswith("_")]
    return (*Backend.__annotations__, *methods)


def check_backend(backend) -> None:
    """TypeError naming what `backend` lacks of the Backend protocol (no member has a default)."""
    missing = [n for n in backend_members() if not hasattr(backend, n)]
    if missing:
        raise TypeError(f"{type(backend).__name__} is not a common.contract.Backend: it lacks {', '.join(missing)}")


def default_config() -> dict:
    """Every flag at its default, as metrics.json's "config" holds them."""
    from .cli import parse_train_args  # the flags' one definition; imported here, cli imports this module's users

    return TrainConfig.from_args(parse_train_args([])).as_dict()
