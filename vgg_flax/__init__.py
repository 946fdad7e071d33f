"""VGG in Flax NNX."""
