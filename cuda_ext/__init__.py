"""CUDA kernels of fasttrain (installed as `fasttrain.cuda_ext`): csrc/ holds the sources, `loader`
builds them with torch.utils.cpp_extension on first use (cached per torch/CUDA/Python version) and
loads them into the process, where they register against the op schemas declared in Python."""

from .loader import ExtensionUnavailable, available, build, cache_dir, find_cuda_home, load

__all__ = ["ExtensionUnavailable", "available", "build", "cache_dir", "find_cuda_home", "load"]
