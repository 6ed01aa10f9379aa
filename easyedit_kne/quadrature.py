"""Quadrature rules for the attribution integral (paper Eq. 4): nodes α in (0, 1] and their weights.

A(W̄) = W̄ ⊙ ∫_0^1 ∂F/∂W |_{W=αW̄} dα ≈ W̄ ⊙ Σ_k w_k ∂F/∂W |_{W=α_k W̄}
- `riemann_right`: the paper's Eq. 5, α_k = k/m, w_k = 1/m (first order in 1/m);
- `gausslegendre`: the m Gauss-Legendre nodes of [-1, 1] mapped to [0, 1] (exact for polynomials of
  degree 2m-1 in α; Captum's default).
"""

from __future__ import annotations

IG_METHODS = ("riemann_right", "gausslegendre")


def ig_nodes(method: str, steps: int) -> list[tuple[float, float]]:
    """[(α_k, w_k)] of `method` with `steps` nodes; the weights sum to 1."""
    if method not in IG_METHODS:
        raise ValueError(f"ig_method={method!r} is not allowed: choose one of {', '.join(IG_METHODS)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"ig_steps={steps!r}: give an integer >= 1")
    if method == "riemann_right":
        return [(k / steps, 1.0 / steps) for k in range(1, steps + 1)]
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(steps)
    return [(float((xi + 1) / 2), float(wi / 2)) for xi, wi in zip(x, w, strict=True)]
