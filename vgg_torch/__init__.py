"""VGG in PyTorch."""
