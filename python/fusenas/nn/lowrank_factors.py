"""Truncated-SVD decompositions of a conv weight into TRP's two factors.

For W of shape (N, C, kh, kw):

- ``"channel"``: SVD of W as an N x (C*kh*kw) matrix. Factor 1 is a kh x kw
  conv C -> r with weight sqrt(S) V^T, factor 2 a 1x1 conv r -> N with weight
  U sqrt(S) (the singular values split evenly, as TRP's code does).
- ``"spatial"``: SVD of W permuted to (C, kh, N, kw) as a (C*kh) x (N*kw)
  matrix. Factor 1 is a kh x 1 conv C -> r with weight U, factor 2 a 1 x kw
  conv r -> N with weight S V^T (all of S folded into factor 2).

Rank choice: a fixed ``rank``; ``energy`` e, the smallest r whose top-r squared
singular values reach e of the total; or ``value_threshold`` t, the number of
singular values >= t (at least 1). The SVD runs in float64 so that a full-rank
decomposition reproduces W to float32 round-off.
"""

from __future__ import annotations

import math

import torch

SCHEMES = ("channel", "spatial")


def check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: expected one of {SCHEMES}, got {scheme!r}")


def max_rank(weight_shape: tuple[int, ...] | torch.Size, scheme: str) -> int:
    """Largest meaningful rank of a (N, C, kh, kw) weight under ``scheme``."""
    check_scheme(scheme)
    n, c, kh, kw = weight_shape
    return min(n, c * kh * kw) if scheme == "channel" else min(c * kh, n * kw)


def _matrix(weight: torch.Tensor, scheme: str) -> torch.Tensor:
    n, c, kh, kw = weight.shape
    w = weight.detach().to(torch.float64)
    if scheme == "channel":
        return w.reshape(n, c * kh * kw)
    return w.permute(1, 2, 0, 3).reshape(c * kh, n * kw)


def singular_values(weight: torch.Tensor, scheme: str) -> torch.Tensor:
    """Singular values (float64, descending) of ``weight`` unfolded as ``scheme`` says."""
    _check_weight(weight)
    check_scheme(scheme)
    return torch.linalg.svdvals(_matrix(weight, scheme))


def choose_rank(
    s: torch.Tensor,
    rank: int | None = None,
    energy: float | None = None,
    value_threshold: float | None = None,
) -> int:
    """The rank that ``rank`` / ``energy`` / ``value_threshold`` selects from singular values s."""
    rules = (("rank", rank), ("energy", energy), ("value_threshold", value_threshold))
    given = [k for k, v in rules if v is not None]
    if len(given) != 1:
        raise ValueError(
            f"rank, energy, value_threshold: expected exactly one of them, got {given or 'none'}"
        )
    full = s.numel()
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
            raise ValueError(f"rank: expected an integer in 1..{full}, got {rank!r}")
        return rank
    if energy is not None:
        if not isinstance(energy, (int, float)) or not 0.0 < energy <= 1.0:
            raise ValueError(f"energy: expected a fraction in (0, 1], got {energy!r}")
        sq = s.to(torch.float64) ** 2
        total = float(sq.sum())
        if total == 0.0:
            return 1
        cum = torch.cumsum(sq, 0) / total
        # Round-off can leave the last cumulative value a hair under 1.0.
        return min(full, int(torch.searchsorted(cum, energy - 1e-12)) + 1)
    if (
        not isinstance(value_threshold, (int, float))
        or value_threshold < 0
        or math.isnan(value_threshold)
    ):
        raise ValueError(f"value_threshold: expected a number >= 0, got {value_threshold!r}")
    return max(1, int((s >= value_threshold).sum()))


def decompose_weight(
    weight: torch.Tensor,
    scheme: str,
    rank: int | None = None,
    energy: float | None = None,
    value_threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of ``weight`` (N, C, kh, kw) under ``scheme`` at the chosen rank.

    Returns:
        (w1, w2) in ``weight``'s dtype and device: channel: (r, C, kh, kw) and
        (N, r, 1, 1); spatial: (r, C, kh, 1) and (N, r, 1, kw).
    """
    _check_weight(weight)
    check_scheme(scheme)
    n, c, kh, kw = weight.shape
    u, s, vh = torch.linalg.svd(_matrix(weight, scheme), full_matrices=False)
    r = choose_rank(s, rank, energy, value_threshold)
    u, s, vh = u[:, :r], s[:r], vh[:r]
    if scheme == "channel":
        root = s.sqrt()
        w1 = (root[:, None] * vh).reshape(r, c, kh, kw)
        w2 = (u * root).reshape(n, r, 1, 1)
    else:
        w1 = u.reshape(c, kh, r).permute(2, 0, 1).reshape(r, c, kh, 1)
        w2 = (s[:, None] * vh).reshape(r, n, kw).permute(1, 0, 2).reshape(n, r, 1, kw)
    like = dict(dtype=weight.dtype, device=weight.device)
    return w1.to(**like).contiguous(), w2.to(**like).contiguous()


def reconstruct_weight(w1: torch.Tensor, w2: torch.Tensor, scheme: str) -> torch.Tensor:
    """The dense (N, C, kh, kw) weight whose conv equals the two factors' composition."""
    check_scheme(scheme)
    if scheme == "channel":
        r, c, kh, kw = w1.shape
        return (w2.reshape(w2.shape[0], r) @ w1.reshape(r, -1)).reshape(-1, c, kh, kw)
    # W[n, c, i, j] = sum_r w2[n, r, 0, j] * w1[r, c, i, 0]
    return torch.einsum("nrj,rci->ncij", w2[:, :, 0, :], w1[:, :, :, 0])


def truncate_weight(
    weight: torch.Tensor,
    scheme: str,
    rank: int | None = None,
    energy: float | None = None,
    value_threshold: float | None = None,
) -> tuple[torch.Tensor, int]:
    """(rank-r reconstruction of ``weight`` in its dtype, r): TRP's in-training projection."""
    w1, w2 = decompose_weight(weight.to(torch.float64), scheme, rank, energy, value_threshold)
    return reconstruct_weight(w1, w2, scheme).to(weight.dtype), w1.shape[0]


def _check_weight(weight: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError(
            f"weight: expected a 4-D conv weight (N, C, kh, kw), got "
            f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}"
        )
    if not weight.is_floating_point():
        raise TypeError(f"weight: expected a floating-point tensor, got {weight.dtype}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight: contains NaN or Inf")


def _fold(matrix: torch.Tensor, shape: torch.Size, scheme: str) -> torch.Tensor:
    """Inverse of :func:`_matrix`: the unfolded matrix back in conv-weight layout."""
    n, c, kh, kw = shape
    if scheme == "channel":
        return matrix.reshape(n, c, kh, kw)
    return matrix.reshape(c, kh, n, kw).permute(2, 0, 1, 3)


def project_with_subgradient(
    weight: torch.Tensor, scheme: str, energy: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """TRP's step on one conv weight: (rank-r projection, U_r V_r^T folded, r).

    r is the energy rank of ``weight`` unfolded as ``scheme`` says; U_r V_r^T
    (from the same SVD) is the sub-gradient of the nuclear norm of the
    unfolded weight restricted to its top-r subspace, as TRP applies it. Both
    come back in ``weight``'s dtype and conv layout.
    """
    _check_weight(weight)
    check_scheme(scheme)
    u, s, vh = torch.linalg.svd(_matrix(weight, scheme), full_matrices=False)
    r = choose_rank(s, energy=energy)
    projected = (u[:, :r] * s[:r]) @ vh[:r]
    sub = u[:, :r] @ vh[:r]
    like = dict(dtype=weight.dtype, device=weight.device)
    return (_fold(projected, weight.shape, scheme).to(**like).contiguous(),
            _fold(sub, weight.shape, scheme).to(**like).contiguous(), r)  # fmt: skip


def nuclear_norm(weight: torch.Tensor, scheme: str) -> float:
    """Sum of the singular values of ``weight`` unfolded as ``scheme`` says."""
    return float(singular_values(weight, scheme).sum())
