"""Framework-free: the architecture tables, the data, the training loop and its reports, shared
by vgg_torch, vgg_gluon and vgg_flax. No module here imports a framework."""

import sys as _sys

FRAMEWORKS = ("torch", "gluon", "flax")
"""The three frameworks, in the order that every report and test lists them."""
PACKAGES = tuple(f"vgg_{name}" for name in FRAMEWORKS)
"""Their packages: vgg_torch, vgg_gluon, vgg_flax."""

if _sys.argv[:1] == ["-m"]:  # a command starting (python -m ...): Ctrl-C while the frameworks import ends in one line
    from .signals import guard_start

    guard_start()
