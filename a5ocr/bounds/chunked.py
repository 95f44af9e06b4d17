"""The CROWN-IBP training loss in chunks of samples, each chunk differentiated as it is bounded.

The trained quantity is a scalar, the mean over the batch of the worst-case cross-entropy of
each sample's margin lower bounds (``loss.worst_case_cross_entropy``), and each sample's term
depends on its own bounds only. So when the final CROWN pass does not fit the memory budget
(``engine.final_chunk``), each chunk of samples can be bounded on detached copies of its IBP
inputs (box, pre-activation bounds, IBP margin bounds), its share of the loss differentiated
at once w.r.t. those copies and the weights, and its graph (the A matrices) freed before the
next chunk: one chunk's graph alive at a time, like the checkpointed chunks of
``engine._crown_final``, but without their backward-time recompute of every chunk.
``_ChunkedMarginLoss`` keeps the gradients and hands them (times the incoming gradient) to the
IBP pass's graph, which stays outside. The bounds, hence the loss and the margins, are the
ones of ``api.robust_margins`` (the same chunks of the same computation); the gradients are
those of the unchunked path up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from a5ocr.bounds.engine import _dense_margin_spec, crown_chunk, final_chunk
from a5ocr.bounds.loss import scatter_margins, worst_case_cross_entropy
from a5ocr.bounds.pruned import IBPPass, hardest_by_ibp, margin_ibp_pass

Tensor = torch.Tensor


@dataclass
class _Plan:
    """What every chunk shares (no tensors with gradients): the IBP pass's net, shapes and
    margins (labels [N], others [N, S]), pos [N, k] (the margins given to CROWN-IBP; None: all),
    f (None: CROWN-IBP alone on those), K classes, ``chunk`` samples per chunk, the ReLU indices
    of the pre-activation bounds (their order in the Function's inputs) and the batch size N."""

    ibp: IBPPass
    pos: Optional[Tensor]
    f: object
    K: int
    chunk: int
    relu_ids: list
    N: int


def _chunk_margins(plan: _Plan, lo: int, hi: int, box, pre: dict, ibp_lb: Tensor) -> Tensor:
    """The margin lower bounds [hi-lo, K] of the samples lo:hi (entry label = 0): CROWN-IBP on
    the chosen margins (mixed with IBP by f), IBP on the others; ``box``, ``pre``, ``ibp_lb``
    are the chunk's rows. The same operations as ``api.robust_margins``."""
    ibp = plan.ibp
    labels, others = ibp.labels[lo:hi], ibp.others[lo:hi]
    pos = None if plan.pos is None else plan.pos[lo:hi]
    chosen = others if pos is None else others.gather(1, pos)
    spec = lambda: _dense_margin_spec(labels, chosen, plan.K, ibp_lb.dtype)  # noqa: E731
    tight, _ = crown_chunk(ibp.net, ibp.shapes, pre, box, spec, (labels, chosen), False, 0, hi - lo)
    f = plan.f
    if pos is None:
        lb = f * tight + (1.0 - f) * ibp_lb if f is not None else tight
    else:
        if f is not None:
            tight = f * tight + (1.0 - f) * ibp_lb.gather(1, pos)
        lb = ibp_lb.scatter(1, pos, tight)
    return scatter_margins(lb, others, plan.K)


def _leaf(t: Tensor, lo: int, hi: int, grad: bool) -> Tensor:
    part = t[lo:hi].detach()
    return part.requires_grad_(True) if grad else part


class _ChunkedMarginLoss(torch.autograd.Function):
    """(plan, c, r, ibp_lb, *pre_flat, *params) -> (loss: the mean worst-case CE, margins
    [N, K] (not differentiable)). c, r: the box the relaxation concretises over; pre_flat: the
    pre-activation bounds (l, u) of the ReLUs ``plan.relu_ids`` in order; params: the weights
    the CROWN pass reads (those that need gradients). The gradients are computed in the
    forward pass, chunk by chunk, and returned (times the loss's incoming gradient) by the
    backward pass."""

    @staticmethod
    def forward(ctx, plan: _Plan, c, r, ibp_lb, *rest):
        n_pre = 2 * len(plan.relu_ids)
        pre_flat, params = rest[:n_pre], rest[n_pre:]
        needs = ctx.needs_input_grad[1:]
        tensors = (c, r, ibp_lb) + tuple(pre_flat)
        grads = [torch.zeros_like(t) if need else None for t, need in zip(tensors, needs)]
        p_need = [p for p, need in zip(params, needs[len(tensors):]) if need]
        p_grads = [torch.zeros_like(p) for p in p_need]
        margins = []
        for lo in range(0, plan.N, plan.chunk):
            hi = min(plan.N, lo + plan.chunk)
            with torch.enable_grad():
                leaves = [_leaf(t, lo, hi, need) for t, need in zip(tensors, needs)]
                pre = {i: (leaves[3 + 2 * j], leaves[4 + 2 * j]) for j, i in enumerate(plan.relu_ids)}
                m = _chunk_margins(plan, lo, hi, (leaves[0], leaves[1]), pre, leaves[2])
                share = worst_case_cross_entropy(m, plan.ibp.labels[lo:hi], "sum") / plan.N
                wrt = [t for t, need in zip(leaves, needs) if need] + p_need
                got = iter(torch.autograd.grad(share, wrt, allow_unused=True) if wrt else ())
            margins.append(m.detach())
            for g, need in zip(grads, needs):
                if need and (gi := next(got)) is not None:
                    g[lo:hi] = gi
            for g in p_grads:
                if (gi := next(got)) is not None:
                    g += gi
            del leaves, pre, m, share, wrt, got  # the chunk's graph and gradients go before the next chunk
        margins = torch.cat(margins)
        ctx.grads, ctx.p_grads = grads, p_grads
        ctx.p_need = [bool(need) for need in needs[len(tensors):]]
        ctx.mark_non_differentiable(margins)
        return worst_case_cross_entropy(margins, plan.ibp.labels), margins

    @staticmethod
    @once_differentiable
    def backward(ctx, g_loss, _g_margins):
        scale = lambda g: None if g is None else g * g_loss  # noqa: E731
        p_grads = iter(ctx.p_grads)
        params = [scale(next(p_grads)) if need else None for need in ctx.p_need]
        return (None, *[scale(g) for g in ctx.grads], *params)


def chunked_robust_loss(
    model: nn.Module,
    x_lower: Tensor,
    x_upper: Tensor,
    labels: Tensor,
    others: Tensor,
    f,
    k: Optional[int],
    max_memory_gib: Optional[float] = None,
) -> tuple[Tensor, Tensor]:
    """``api.robust_loss`` for crown-ibp (with ``f`` None or a mix in (0, 1), ``k`` None for all
    margins or 1 <= k < S) and the detached margins: -> (loss scalar, margins [N, K]).

    One IBP pass (``pruned.margin_ibp_pass``); the final CROWN pass in one piece when it fits
    ``max_memory_gib`` (``engine.final_chunk``), else chunk by chunk in ``_ChunkedMarginLoss``
    (no recompute). others [N, S]: the classes other than each label, increasing."""
    ibp = margin_ibp_pass(model, x_lower, x_upper, labels, others)
    K = ibp.shapes[-1][0]
    pos = None if k is None else hardest_by_ibp(ibp.ibp_lb, k)
    S = others.shape[1] if pos is None else pos.shape[1]
    N = x_lower.shape[0]
    chunk = final_chunk(ibp.net, ibp.shapes, ibp.pre, ibp.box, S, False, max_memory_gib)
    relu_ids = sorted(ibp.pre)
    plan = _Plan(ibp, pos, f, K, chunk, relu_ids, N)
    if chunk >= N or not torch.is_grad_enabled():
        margins = torch.cat([_chunk_margins(plan, lo, min(N, lo + chunk), _rows(ibp.box, lo, lo + chunk),
                                            {i: _rows(ibp.pre[i], lo, lo + chunk) for i in relu_ids},
                                            ibp.ibp_lb[lo : lo + chunk]) for lo in range(0, N, chunk)])
        return worst_case_cross_entropy(margins, labels), margins.detach()
    params = _weights(model)
    pre_flat = [t for i in relu_ids for t in ibp.pre[i]]
    return _ChunkedMarginLoss.apply(plan, ibp.box[0], ibp.box[1], ibp.ibp_lb, *pre_flat, *params)


def _weights(model: nn.Module) -> list[Tensor]:
    """The tensors of ``model`` that need gradients: its parameters and buffers, and plain tensor
    attributes of its modules (a weight swapped in by hand, as gradcheck tests do). The chunks'
    gradients reach these only: they are the Function's inputs."""
    out, seen = [], set()
    for m in model.modules():
        attrs = [v for v in vars(m).values() if isinstance(v, Tensor)]
        for t in [*m._parameters.values(), *m._buffers.values(), *attrs]:
            if t is not None and t.requires_grad and id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


def _rows(pair, lo: int, hi: int):
    return pair[0][lo:hi], pair[1][lo:hi]
