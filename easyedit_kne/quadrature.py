"""Quadrature rules for the attribution integral (paper Eq. 4): nodes α in [0, 1] and their weights.

A(W̄) = W̄ ⊙ ∫_0^1 ∂F/∂W |_{W=αW̄} dα ≈ W̄ ⊙ Σ_k w_k ∂F/∂W |_{W=α_k W̄}
- `riemann_right`: the paper's Eq. 5, α_k = k/m, w_k = 1/m (error O(1/m));
- `midpoint`: α_k = (k - 1/2)/m, w_k = 1/m (error O(1/m²) for a smooth integrand);
- `trapezoid`: α_k = k/m for k = 0..m, w_k = 1/m with half weight at both ends (error O(1/m²); m + 1 nodes,
  one of them α = 1);
- `gausslegendre`: the m Gauss-Legendre nodes of [-1, 1] mapped to [0, 1] (exact for polynomials of
  degree 2m-1 in α; Captum's default).
The fast path runs the node α = 1 in the unscaled trunk row, which runs anyway; every other node costs one
row per module and request (`branch_rows`).
"""

from __future__ import annotations

IG_METHODS = ("riemann_right", "midpoint", "trapezoid", "gausslegendre")


def ig_nodes(method: str, steps: int) -> list[tuple[float, float]]:
    """[(α_k, w_k)] of `method` with `steps` intervals (nodes for Gauss-Legendre); the weights sum to 1."""
    if method not in IG_METHODS:
        raise ValueError(f"ig_method={method!r} is not allowed: choose one of {', '.join(IG_METHODS)}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"ig_steps={steps!r}: give an integer >= 1")
    m = steps
    if method == "riemann_right":
        return [(k / m, 1.0 / m) for k in range(1, m + 1)]
    if method == "midpoint":
        return [((k - 0.5) / m, 1.0 / m) for k in range(1, m + 1)]
    if method == "trapezoid":
        return [(k / m, (0.5 if k in (0, m) else 1.0) / m) for k in range(0, m + 1)]
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(m)
    return [(float((xi + 1) / 2), float(wi / 2)) for xi, wi in zip(x, w, strict=True)]


def branch_rows(method: str, steps: int) -> int:
    """Rows per module and request that the fast path adds to the trunk row: the nodes other than α = 1."""
    return sum(1 for a, _ in ig_nodes(method, steps) if a != 1.0)
