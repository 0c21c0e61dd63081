"""float64 eigendecompositions and damped spectral functions shared by the strategies."""

from __future__ import annotations

import torch

from .options import ApplyOptions


def sym_eigh(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric part of m, in float64."""
    m = m.to(torch.float64)
    e, q = torch.linalg.eigh(0.5 * (m + m.T))
    return e, q.contiguous()  # row-major, like a loaded copy: applying gives bit-identical results


def spectral_scale(eig: torch.Tensor, opts: ApplyOptions) -> torch.Tensor:
    """Elementwise f(lambda) applied along the eigenbasis.

    Damped: (lambda + d)^power with d absolute or d = damping x mean(lambda) over the module
    (the relative heuristic of Grosse et al. 2023, "Studying large language model generalization
    with influence functions"). Pseudo-inverse: lambda^power where lambda > rtol x max, else 0.
    """
    eig = eig.to(torch.float64)
    if float(opts.power) != int(opts.power):  # fractional powers need a non-negative spectrum
        eig = eig.clamp(min=0.0)
    if opts.pseudo_inverse:
        keep = eig > opts.pinv_rtol * eig.max().clamp(min=0.0)
        return torch.where(keep, eig.clamp(min=torch.finfo(eig.dtype).tiny) ** opts.power, torch.zeros_like(eig))
    d = opts.damping if opts.damping_mode == "absolute" else opts.damping * float(eig.mean())
    return (eig + d) ** opts.power
