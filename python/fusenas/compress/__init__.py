"""Compression: truncated-SVD decompositions (TRP) and model conversion to fused layers."""

from fusenas.compress.decompose import DecomposeConfig, decompose_, format_decompose_report
from fusenas.nn.lowrank_factors import (
    choose_rank,
    decompose_weight,
    max_rank,
    reconstruct_weight,
    singular_values,
    truncate_weight,
)

__all__ = [
    "DecomposeConfig",
    "decompose_",
    "format_decompose_report",
    "choose_rank",
    "decompose_weight",
    "max_rank",
    "reconstruct_weight",
    "singular_values",
    "truncate_weight",
]
