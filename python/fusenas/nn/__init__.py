"""Modules backed by fusenas' fused ops."""

from fusenas.nn.pc_mixed_op import PartialChannelMixedOp
from fusenas.nn.quant_conv import QuantConv2d
from fusenas.nn.quant_linear import QuantLinear

__all__ = ["PartialChannelMixedOp", "QuantConv2d", "QuantLinear"]
