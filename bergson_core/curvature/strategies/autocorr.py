"""Gradient covariance ("autocorrelation") per module in the stored (projected) space, as in
TrackStar (Chang et al. 2024, "Scalable influence and fact tracing for large language model
pretraining"): H = mean_n vec(G_n) vec(G_n)^T, optionally mixed with the query set's covariance

    H = lambda H_query + (1 - lambda) H_corpus.

lambda is fixed, or chosen from the spectra (their appendix A.1.3, as Bergson's
`target_downweight_components` does): the eigenvalues of both covariances, pooled over modules
and sorted in decreasing order, are weighted so that the two curves cross at component k; the top
k query-specific directions then dominate H and are downweighted by H^-1 (or H^-1/2 on both sides
for cosine scores). k is capped below the smaller numerical rank, so a small query set still gives
a crossing.
"""

from __future__ import annotations

import torch

from ..linalg import spectral_scale, sym_eigh
from ..passes import autocorr_partial_stats
from ..stats import StatisticError, key
from ..strategy import Fit, Strategy, layout_of


def _spectrum(stats, blocks) -> torch.Tensor:
    """Pooled eigenvalues of all modules' mean covariances, largest first."""
    n = stats.counts["documents"]
    eig = [torch.linalg.eigvalsh(stats.tensor(b.name, "H") / n) for b in blocks]
    return torch.cat(eig).clamp(min=0).sort(descending=True).values


def mixing_coefficient(query, corpus, blocks, target_components: int) -> float:
    """lambda such that lambda e_q[k] = (1 - lambda) e_c[k] at k = target (capped by rank)."""
    e_q, e_c = _spectrum(query, blocks), _spectrum(corpus, blocks)
    rank = min(int((e_q > 1e-12 * e_q[0]).sum()), int((e_c > 1e-12 * e_c[0]).sum()))
    k = max(0, min(target_components, rank) - 1)
    if float(e_q[k] + e_c[k]) == 0.0:
        return 0.5
    return float(e_c[k] / (e_q[k] + e_c[k]))


class GradientCovariance(Strategy):
    name = "autocorr"
    uses_fit_options = True
    needs = ("autocorr",)
    optional = ("autocorr-query",)
    help = "Gradient covariance per module (TrackStar), optionally mixed with the query set's."

    def fit(self, stats, opts, base, layout) -> Fit:
        corpus = stats["autocorr"]
        query = stats.get("autocorr-query")
        space, blocks = layout_of(corpus)
        lam = 0.0
        if query is not None:
            if query.meta != corpus.meta:
                raise StatisticError("query and corpus covariances were computed with different settings: "
                                     "recompute them from gradients of the same spec")
            lam = opts.mix_lambda if opts.mix_lambda is not None else mixing_coefficient(
                query, corpus, blocks, opts.target_downweight_components)
        tensors = {}
        for b in blocks:
            h = (1 - lam) * corpus.tensor(b.name, "H") / corpus.counts["documents"]
            if query is not None:
                h = h + lam * query.tensor(b.name, "H") / query.counts["documents"]
            e, q = sym_eigh(h)  # [w], [w, w]
            tensors[key(b.name, "Q")] = q
            tensors[key(b.name, "e")] = e
        meta = {"documents": corpus.counts["documents"], "mix_lambda": lam,
                "query_documents": query.counts["documents"] if query is not None else 0,
                "unit_normalize": corpus.meta.get("unit_normalize", False)}
        return Fit(self.name, space, blocks, tensors, meta)

    def apply_block(self, fit, block, g, opts) -> torch.Tensor:
        q, e = fit.tensor(block.name, "Q"), fit.tensor(block.name, "e")
        v = g.reshape(g.shape[0], -1)  # [N, w]
        out = ((v @ q) * spectral_scale(e, opts)) @ q.T  # Q f(e) Q^T v
        return out.reshape(g.shape)

    def rows_stats(self, rows, blocks, space, **kw):
        return autocorr_partial_stats(rows, blocks, space, unit_normalize=kw.get("unit_normalize", False), kind=kw.get("kind", "autocorr"))
