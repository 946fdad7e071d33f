"""VGG in PyTorch."""

import sys as _sys

if _sys.argv[:1] == ["-m"]:  # a command starting (python -m ...): Ctrl-C while the frameworks import ends in one line
    from common.signals import guard_start

    guard_start()
