"""Fused ops, registered under torch.ops.fusenas."""

from fusenas.ops.kbit_matmul import dequantize_weight, kbit_matmul
from fusenas.ops.lowrank_conv import lowrank_conv2d
from fusenas.ops.pc_mixed_op import PC_DARTS_PRIMITIVES, pc_mixed_op

__all__ = [
    "kbit_matmul",
    "dequantize_weight",
    "lowrank_conv2d",
    "pc_mixed_op",
    "PC_DARTS_PRIMITIVES",
]

# CUDA kernels of the ops above: registered last, on top of their definitions.
import fusenas.ops.lowrank_conv_cuda  # noqa: E402, F401
import fusenas.ops.pc_mixed_op_cuda  # noqa: E402, F401
