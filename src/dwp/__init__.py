"""dwp: learned priors over convolution kernels (the Deep Weight Prior and baselines)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
