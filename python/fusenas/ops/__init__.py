"""Fused ops, registered under torch.ops.fusenas."""

from fusenas.ops.kbit_matmul import dequantize_weight, kbit_matmul

__all__ = ["kbit_matmul", "dequantize_weight"]
