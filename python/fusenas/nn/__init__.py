"""Modules backed by fusenas' fused ops."""

from fusenas.nn.fold_bn import fold_batchnorm_
from fusenas.nn.fuse_epilogues import fuse_epilogues_, optimize_for_inference
from fusenas.nn.lowrank_conv import LowRankConv2d
from fusenas.nn.pc_mixed_op import PartialChannelMixedOp
from fusenas.nn.quant_conv import QuantConv2d
from fusenas.nn.quant_linear import QuantLinear

__all__ = [
    "LowRankConv2d",
    "PartialChannelMixedOp",
    "QuantConv2d",
    "QuantLinear",
    "fold_batchnorm_",
    "fuse_epilogues_",
    "optimize_for_inference",
]
