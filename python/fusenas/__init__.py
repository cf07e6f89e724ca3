"""fusenas: fused C++/CUDA kernels for neural architecture search and model compression."""

__version__ = "0.1.0"

from fusenas import ops, quant  # noqa: E402  (registers torch.ops.fusenas.*)
from fusenas.quant import PackedWeight, dequantize, quantize_weight  # noqa: E402

__all__ = ["ops", "quant", "PackedWeight", "quantize_weight", "dequantize", "__version__"]
