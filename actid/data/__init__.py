"""Data sets: modular arithmetic (generated) and images (CIFAR, offline digits)."""
