"""attnkit: fast, faithful attention kernels for speech recognition.

NumPy arrays in, NumPy arrays out; C++ SIMD kernels (AVX-512, AVX2, portable) chosen at run time.
``scaled_dot_product_attention`` also takes CuPy arrays and PyTorch CUDA tensors (a CUDA kernel,
in builds made with nvcc) and returns arrays of the same library.
``attnkit.espnet`` holds ESPnet's RNN attention family (prepare once, step many; and
ESPnet-compatible wrappers); ``attnkit.asr`` (imported on demand) runs whole ESPnet RNN
recognisers: encoders, decoder, searches, model files and ``Recognizer``.
"""
from attnkit._core import CudaError, UnsupportedError
from attnkit.dot_product import scaled_dot_product_attention
from attnkit.multi_head import MultiHeadAttention, MultiHeadMemory, multi_head_attention
from attnkit import espnet
from attnkit.plot import plot_attention
from attnkit.runtime import _version, get_cpu_isa, get_num_threads, set_cpu_isa, set_num_threads, show_config


__version__ = _version()

# Resolve the CPU ISA now, so that a bad ATTNKIT_CPU_ISA fails at import with a clear message.
get_cpu_isa()

__all__ = [
    "CudaError",
    "MultiHeadAttention",
    "MultiHeadMemory",
    "UnsupportedError",
    "espnet",
    "get_cpu_isa",
    "get_num_threads",
    "multi_head_attention",
    "plot_attention",
    "scaled_dot_product_attention",
    "set_cpu_isa",
    "set_num_threads",
    "show_config",
]
