"""k-bit weight quantization: packed format, quantize / dequantize, model conversion, files."""

from fusenas.quant.packed import PackedWeight, dequantize, parse_bits, quantize_weight

# isort: split
from fusenas.quant.convert import QuantConfig, format_report, quantize_
from fusenas.quant.io import (
    ModelState,
    load_checkpoint,
    load_float,
    load_model,
    load_packed,
    save_float,
    save_packed,
)

__all__ = [
    "PackedWeight",
    "quantize_weight",
    "dequantize",
    "parse_bits",
    "QuantConfig",
    "quantize_",
    "format_report",
    "ModelState",
    "save_packed",
    "load_packed",
    "save_float",
    "load_float",
    "load_checkpoint",
    "load_model",
]
