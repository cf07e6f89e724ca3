"""fusenas: fused C++/CUDA kernels for neural architecture search and model compression."""

__version__ = "0.1.0"

from fusenas import ops, quant  # noqa: E402  (registers torch.ops.fusenas.*)

# isort: split
# After quant: fusenas.quant.convert / io import fusenas.nn, which imports fusenas.quant.packed.
from fusenas import nn  # noqa: E402

# isort: split
from fusenas import compress, search  # noqa: E402
from fusenas.compress import DecomposeConfig, decompose_  # noqa: E402
from fusenas.quant import (  # noqa: E402
    PackedWeight,
    QuantConfig,
    dequantize,
    load_packed,
    quantize_,
    quantize_weight,
    save_packed,
)

__all__ = [
    "ops",
    "quant",
    "nn",
    "compress",
    "search",
    "decompose_",
    "DecomposeConfig",
    "PackedWeight",
    "quantize_weight",
    "dequantize",
    "quantize_",
    "QuantConfig",
    "save_packed",
    "load_packed",
    "__version__",
]
