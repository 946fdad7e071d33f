"""VGG in MXNet Gluon."""
import numpy as np

# MXNet 1.9.1, the last release, still uses the alias `np.bool` that NumPy 1.24
# removed. This is the one place that restores it, before anything imports mxnet.
np.bool = bool
