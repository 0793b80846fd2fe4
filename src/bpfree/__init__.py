"""bpfree: a reproducible benchmark of backpropagation-free training."""
__version__ = "0.1.0"
