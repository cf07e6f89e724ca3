"""Architecture search: spaces (DARTS / PC-DARTS) and genotypes."""

from fusenas.search.genotype import Genotype
from fusenas.search.spaces import DartsSupernet, derive_genotype

__all__ = ["Genotype", "DartsSupernet", "derive_genotype"]
