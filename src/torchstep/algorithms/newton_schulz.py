r"""Newton–Schulz orthogonalization: an approximation of :math:`U V^\top` for :math:`G = U S V^\top`.

After scaling :math:`X_0 = G / \max(\|G\|_F, \epsilon)` (so every singular value is at most 1),
``steps`` iterations of the odd quintic

.. math::
    X_{k+1} = a X_k + (b A_k + c A_k^2) X_k, \qquad A_k = X_k X_k^\top

push every singular value toward 1 while keeping the singular vectors. The coefficients
:math:`(a, b, c)` = (3.4445, -4.7750, 2.0315) maximize the slope at zero; the result has
singular values spread roughly over [0.5, 1.5] rather than exactly 1, which works as well for
Muon. The iteration runs in bfloat16, on the wide orientation of the matrix (a tall matrix is
transposed first and back at the end, so :math:`A_k` is the smaller Gram matrix).
Reference: Jordan et al., "Muon: An optimizer for hidden layers in neural networks" (2024),
https://kellerjordan.github.io/posts/muon/ ; Bernstein & Newhouse, "Old Optimizer, New Norm:
An Anthology" (2024) for the orthogonalized-update view.
"""

from __future__ import annotations

import torch

DEFAULT_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
DEFAULT_STEPS = 5
DEFAULT_EPS = 1e-7


def orthogonalize(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """The Newton–Schulz approximation of the orthogonal factor of the 2-D tensor ``g``, in
    bfloat16 (``g`` itself is never modified)."""
    a, b, c = coefficients
    tall = g.size(0) > g.size(1)
    x = g.to(torch.bfloat16, copy=True)
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = torch.addmm(x, poly, x, beta=a)  # a X + (b A + c A^2) X
    return x.T if tall else x
