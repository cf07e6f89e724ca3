"""Modules backed by fusenas' fused ops."""

from fusenas.nn.quant_conv import QuantConv2d
from fusenas.nn.quant_linear import QuantLinear

__all__ = ["QuantConv2d", "QuantLinear"]
