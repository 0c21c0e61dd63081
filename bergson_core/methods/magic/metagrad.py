"""MAGIC: exact metagradients of the query loss after training with respect to every document's
training weight (Ilyas & Engstrom et al. 2025, "MAGIC: Near-Optimal Data Attribution for Deep
Learning"; reverse-mode through optimizer steps after Maclaurin et al. 2015).

Training is the project's trainer (bergson_core.train.trainer) written as a pure function of the weights w:

    theta_{s+1}, opt_{s+1} = U(theta_s, opt_s, g_s, lr_s),   g_s = d/dtheta sum_{d in B_s} w_d loss_d(theta_s) / denom

(or with a weight per token, w_d loss_d = sum_t w_{d,t} ce_{d,t}: bergson_core.methods.magic.tokens)

and the metagradient dQ(theta_T)/dw is accumulated backwards, step by step, with vector-Jacobian
products of one step at a time (the step differentiated twice: g_s itself is a gradient, so its
VJP is a Hessian-vector product). States theta_s are not all kept: a checkpointing schedule stores
some and recomputes the others forwards from the nearest stored one:

    every  all T states kept                           memory T,        recompute 0
    sqrt   every k = ceil(sqrt T)-th state, then the   memory ~2 sqrt T, recompute ~T
           states of one segment at a time
    log    recursive bisection from the initial state  memory ~log2 T,  recompute ~T log2 T

All three run the same floating-point operations on the same states, so they give identical
metagradients. AdamW's sqrt(v) uses a square root whose derivative is 0 at v = 0 (parameters whose
gradient is exactly zero, e.g. unused position embeddings), with the same forward values: the
trainer's own update (bergson_core.train.optim) with `sqrt=safe_sqrt`, not a copy.

Score convention: score(q, d) = -dQ_q/dw_d, so a positive score means that upweighting d lowers
the query loss, like every other method here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from ...config.eval import TrainOptions
from ...data.batching import collate
from ...data.corpus import Doc
from ...model.loss import document_losses
from ...train.optim import DIFFERENTIABLE_UPDATES, init_states
from ...train.trainer import learning_rate, step_batches, total_steps

SCHEDULES = ("every", "sqrt", "log")

Params = dict[str, torch.Tensor]
OptState = dict[str, dict[str, torch.Tensor]]

@dataclass
class State:
    """theta_s and the optimizer state after s steps."""

    step: int
    params: Params
    opt: OptState

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.params.values()) + sum(
            t.numel() * t.element_size() for s in self.opt.values() for t in s.values())


@dataclass
class MagicStats:
    schedule: str
    steps: int
    forward_steps: int = 0  # steps run without a graph (first pass + recomputation)
    backward_steps: int = 0  # differentiated steps (one per step per query seed)
    peak_states: int = 0  # most states held at once
    state_bytes: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def peak_bytes(self) -> int:
        return self.peak_states * self.state_bytes


def functional_losses(model, params: Params, ids, mask, labels, reduction: str,
                      token_weights: torch.Tensor | None = None) -> torch.Tensor:
    """bergson_core.model.loss.document_losses through functional_call (parameters as inputs) [B]."""
    logits = functional_call(model, params, (), {"input_ids": ids, "attention_mask": mask}).logits
    return document_losses(logits, labels, reduction, token_weights)


class Unrolled:
    """Training of `model` (from its current weights) on `docs` with weights w, one step at a time."""

    def __init__(self, model: torch.nn.Module, docs: list[Doc], opts: TrainOptions, pad_id: int = 0):
        self.model = model.eval()  # no dropout: a step is a pure function of the weights
        self.docs, self.opts, self.pad_id = docs, opts, pad_id
        self.n = len(docs)
        self.total = total_steps(self.n, opts)
        self.device = next(model.parameters()).device
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.update = DIFFERENTIABLE_UPDATES[opts.optimizer]
        self.denom = opts.batch_size * opts.grad_accum
        self._batches = {}

    def initial(self) -> State:
        params = {n: p.detach().clone() for n, p in self.model.named_parameters() if n in self.names}
        return State(0, params, init_states(self.model, params, self.opts))

    def batches(self, s: int):
        if s not in self._batches:
            self._batches[s] = [(rows, collate([self.docs[r] for r in rows], self.pad_id, self.device))
                                for rows in step_batches(self.n, s, self.opts)]
        return self._batches[s]

    def step(self, st: State, w: torch.Tensor, create_graph: bool = False) -> State:
        """theta_{s+1} from theta_s; with create_graph the result is differentiable in st and w."""
        s = st.step
        plist = [st.params[n] for n in self.names]
        # the math attention kernel: composed of twice-differentiable ops (the fused CPU/flash kernels
        # have no double backward), and used in every step so all passes compute the same values
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            if not create_graph:
                plist = [p.detach().requires_grad_(True) for p in plist]
            params = dict(zip(self.names, plist))
            grads = [torch.zeros_like(p) for p in plist]
            for rows, (ids, mask, labels) in self.batches(s):
                if w.dim() == 1:  # a weight per document
                    lw = w[rows].to(dtype=plist[0].dtype)  # [B]
                    loss = (functional_losses(self.model, params, ids, mask, labels, self.opts.train_loss) * lw).sum()
                else:  # a weight per (document, position of the predicted token)
                    tw = w[rows, :ids.shape[1]].to(dtype=plist[0].dtype)  # [B, T]
                    loss = functional_losses(self.model, params, ids, mask, labels, self.opts.train_loss, tw).sum()
                loss = loss / self.denom
                parts = torch.autograd.grad(loss, plist, create_graph=create_graph, allow_unused=True)
                grads = [g if pg is None else g + pg for g, pg in zip(grads, parts)]
        lr = learning_rate(s, self.total, self.opts)
        new_p, new_o = {}, {}
        for name, p, g in zip(self.names, plist, grads):
            if not create_graph:
                p, g = p.detach(), g.detach()
            new_p[name], new_o[name] = self.update(p, g, st.opt[name], s + 1, lr, self.opts)
        if not create_graph:
            new_p = {k: v.detach() for k, v in new_p.items()}
            new_o = {k: {kk: t.detach() for kk, t in v.items()} for k, v in new_o.items()}
        return State(s + 1, new_p, new_o)

    def run(self, st: State, w: torch.Tensor, stop: int, stats: MagicStats | None = None) -> State:
        while st.step < stop:
            st = self.step(st, w)
            if stats:
                stats.forward_steps += 1
        return st


def query_loss(unrolled: Unrolled, params: Params, queries: list[Doc], seeds: torch.Tensor,
               reduction: str = "sum") -> torch.Tensor:
    """sum_q seeds[q] * loss_q(theta) (queries' losses as bergson validate measures them)."""
    ids, mask, labels = collate(queries, unrolled.pad_id, unrolled.device)
    losses = functional_losses(unrolled.model, params, ids, mask, labels, reduction)  # [Q]
    return (losses * seeds.to(losses.dtype)).sum()


def _vjp(unrolled: Unrolled, st: State, w: torch.Tensor, bar: State, batched: bool = False) -> tuple[State, torch.Tensor]:
    """(d theta_s, d opt_s) and dw of <bar, step(st, w)>: one reverse step. With `batched`, every
    cotangent in `bar` has a leading dimension R (one per query seed), vmapped by autograd."""
    names = unrolled.names
    p = {n: st.params[n].detach().requires_grad_(True) for n in names}
    o = {n: {k: t.detach().requires_grad_(True) for k, t in st.opt[n].items()} for n in names}
    wl = w.detach().requires_grad_(True)
    out = unrolled.step(State(st.step, p, o), wl, create_graph=True)
    keys = [(n, k) for n in names for k in o[n]]
    outs = [out.params[n] for n in names] + [out.opt[n][k] for n, k in keys]
    cots = [bar.params[n] for n in names] + [bar.opt[n][k] for n, k in keys]
    ins = [p[n] for n in names] + [o[n][k] for n, k in keys] + [wl]
    pairs = [(x, c) for x, c in zip(outs, cots) if x.requires_grad]
    grads = torch.autograd.grad([x for x, _ in pairs], ins, grad_outputs=[c for _, c in pairs], allow_unused=True,
                                is_grads_batched=batched)
    lead = (pairs[0][1].shape[0],) if batched else ()
    grads = [i.new_zeros(lead + i.shape) if g is None else g.detach() for g, i in zip(grads, ins)]
    gp = dict(zip(names, grads[:len(names)]))
    go: OptState = {n: {} for n in names}
    for (n, k), g in zip(keys, grads[len(names):-1]):
        go[n][k] = g
    return State(st.step, gp, go), grads[-1]


def metagradients(model: torch.nn.Module, docs: list[Doc], queries: list[Doc], opts: TrainOptions,
                  weights: torch.Tensor | None = None, schedule: str = "every", pad_id: int = 0,
                  per_query: bool = True, query_reduction: str = "sum", query_batch: int = 1,
                  store=None, on_step: Callable[[str, int], None] | None = None) -> tuple[torch.Tensor, MagicStats]:
    """dQ_q(theta_T)/dw [Q, N] (per_query) or d sum_q Q_q / dw [1, N], and the run's statistics.
    With per-token `weights` [N, L] (bergson_core.methods.magic.tokens) the result is [Q, N, L]:
    dQ_q/dw_{d,t} for the loss of predicting document d's token t. `model` holds the initial
    weights and is not changed. `query_batch` > 1 runs that many queries'
    backward passes together (vmapped vector-Jacobian products: one recomputation, one graph per
    step for the whole group, R times the cotangent memory).

    `store` (a bergson_core.methods.magic.state.StateStore) saves the forward phase's kept states and the
    backward phase's position every k steps, and resumes from what an earlier, killed run left
    there (bit-identical result). `on_step(phase, step)` runs after each forward step ("forward",
    the state's step) and each differentiated step ("backward", the step differentiated), once its
    progress is saved: a test's way to kill a run at a chosen point."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown checkpointing schedule {schedule!r}; choose from {SCHEDULES}")
    t0 = time.perf_counter()
    un = Unrolled(model, docs, opts, pad_id)
    T = un.total
    w = torch.ones(len(docs), dtype=torch.float64) if weights is None else weights.detach().to(torch.float64)
    longest = max((len(d.input_ids) for d in docs), default=0)
    if w.shape != (len(docs),) and (w.dim() != 2 or w.shape[0] != len(docs) or w.shape[1] < longest):
        raise ValueError(f"weights must be [{len(docs)}] or [{len(docs)}, {longest} or more], got {tuple(w.shape)}")
    w = w.to(un.device)
    stats = MagicStats(schedule, T)
    first = un.initial()
    stats.state_bytes = first.nbytes()
    k = max(1, math.ceil(math.sqrt(T)))
    seeds = torch.eye(len(queries), dtype=torch.float64) if per_query else torch.ones(1, len(queries),
                                                                                        dtype=torch.float64)
    group_size = max(1, query_batch)
    if store is not None:
        store.open({"schedule": schedule, "steps": T, "segment": k, "documents": len(docs), "queries": len(queries),
                    "per_query": per_query, "query_batch": group_size, "query_reduction": query_reduction,
                    "weights": _digest(w), "device": str(un.device), "dtype": str(first.params[un.names[0]].dtype)})

    def keeps(step: int) -> bool:
        return schedule == "every" or (schedule == "sqrt" and step % k == 0)

    # forward phase: keep what the schedule keeps (and save it, with a resume point every k steps)
    stored: dict[int, State] = {0: first}
    st = first
    if store is not None:
        for s in store.kept_steps():
            stored[s] = store.load_state(s, un.device)
        reached = store.reached()
        st = stored[reached] if reached in stored else store.load_state(reached, un.device)
        stats.extra["forward_resumed_at"] = reached
    while st.step < T:
        st = un.step(st, w)
        stats.forward_steps += 1
        if keeps(st.step):
            stored[st.step] = st
        if store is not None and (keeps(st.step) or st.step % k == 0 or st.step == T):
            store.save_state(st, kept=keeps(st.step) or st.step == T)
        if on_step:
            on_step("forward", st.step)
    final = st
    if not keeps(T):
        stored.pop(T, None)  # a resumed run loaded it; the schedule holds it as `final` only
    held = len(stored) + (0 if T in stored else 1)
    stats.peak_states = held
    out = []
    batched = query_batch > 1
    done = store.done() if store is not None else {}
    position = store.backward() if store is not None else None
    for lo in range(0, seeds.shape[0], group_size):
        if lo in done:
            out.append(done[lo])
            continue
        group = seeds[lo:lo + group_size]  # [R, Q]
        if position is not None and position["group"] == lo:
            bar, wbar = store.load_backward(un.device)
            stats.extra["backward_resumed_at"] = (lo, bar.step)
        else:
            bar = _first_cotangent(un, final, queries, group, query_reduction, batched)
            wbar = w.new_zeros(((len(group),) if batched else ()) + w.shape)
        start = bar.step

        def back(st_s: State, bar_: State, group: int = lo) -> State:
            nonlocal wbar
            bar_, dw = _vjp(un, st_s, w, bar_, batched)
            wbar = wbar + dw
            stats.backward_steps += 1
            if store is not None and 0 < st_s.step and st_s.step % k == 0:
                store.save_backward(group, bar_, wbar)
            if on_step:
                on_step("backward", st_s.step)
            return bar_

        if schedule == "every":
            for s in reversed(range(start)):
                bar = back(stored[s], bar)
        elif schedule == "sqrt":
            for c in sorted((c for c in stored if c < start), reverse=True):
                seg = [stored[c]]
                while seg[-1].step < min(c + k, start) - 1:
                    seg.append(un.step(seg[-1], w))
                    stats.forward_steps += 1
                stats.peak_states = max(stats.peak_states, held + len(seg) - 1)
                for st_s in reversed(seg):
                    bar = back(st_s, bar)
        else:  # log: recursive bisection, at most log2(T) states held besides the final one
            def rev(a_state: State, b: int, bar_: State, depth: int) -> State:
                a = a_state.step
                stats.peak_states = max(stats.peak_states, held + depth)
                if b - a == 1:
                    return back(a_state, bar_)
                mid = (a + b) // 2
                mid_state = un.run(a_state, w, mid, stats)
                bar_ = rev(mid_state, b, bar_, depth + 1)
                del mid_state
                return rev(a_state, mid, bar_, depth)

            if start:
                bar = rev(first, start, bar, 0)
        result = wbar.cpu() if batched else wbar.cpu()[None]
        if store is not None:
            store.save_done(lo, result)
        out.append(result)
    stats.seconds = time.perf_counter() - t0
    stats.extra["segment"] = k if schedule == "sqrt" else None
    return torch.cat(out), stats


def _first_cotangent(un: Unrolled, final: State, queries: list[Doc], group: torch.Tensor, reduction: str,
                     batched: bool) -> State:
    """dQ/d(theta_T, opt_T) of each seed in `group` [R, Q] (stacked when batched): the backward start."""
    firsts = []
    for seed in group:
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            fp = {n: t.detach().requires_grad_(True) for n, t in final.params.items()}
            q = query_loss(un, fp, queries, seed, reduction)
            gq = torch.autograd.grad(q, [fp[n] for n in un.names], allow_unused=True)
        firsts.append({n: (torch.zeros_like(fp[n]) if g is None else g.detach()) for n, g in zip(un.names, gq)})
    lead = (len(group),) if batched else ()
    return State(final.step, {n: torch.stack([f[n] for f in firsts]) if batched else firsts[0][n] for n in un.names},
                 {n: {kk: t.new_zeros(lead + t.shape) for kk, t in final.opt[n].items()} for n in un.names})


def _digest(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def retrained_query_losses(model: torch.nn.Module, docs: list[Doc], queries: list[Doc], opts: TrainOptions,
                           weights: torch.Tensor, pad_id: int = 0, query_reduction: str = "sum") -> torch.Tensor:
    """Query losses [Q] after training a copy of `model` with the project's trainer (the reference
    that finite differences of the metagradient are checked against)."""
    import copy

    from ...train.trainer import evaluate_losses, train

    m = copy.deepcopy(model)
    m.requires_grad_(True)
    train(m, docs, opts, weights=weights, pad_id=pad_id)
    return evaluate_losses(m, queries, pad_id, next(m.parameters()).device, query_reduction)
