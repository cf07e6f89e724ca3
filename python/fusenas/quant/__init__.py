"""k-bit weight quantization: packed format, quantize / dequantize."""

from fusenas.quant.packed import PackedWeight, dequantize, parse_bits, quantize_weight

__all__ = ["PackedWeight", "quantize_weight", "dequantize", "parse_bits"]
