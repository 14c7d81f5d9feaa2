"""ipilab: model, measure and verify the Linux kernel's cross-CPU function calls and their IPIs."""

__version__ = "0.1.0"
