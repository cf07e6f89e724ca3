"""Search spaces built from fusenas' fused ops."""

from fusenas.search.spaces.darts import (
    DartsSupernet,
    SearchCell,
    derive_genotype,
    node_normalised,
    num_edges,
)

__all__ = ["DartsSupernet", "SearchCell", "derive_genotype", "node_normalised", "num_edges"]
