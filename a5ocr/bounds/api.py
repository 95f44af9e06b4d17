"""Public entry points of the bound engine (see ``a5ocr.bounds``)."""

from __future__ import annotations

import copy
import math
from typing import Optional

import torch
from torch import nn

from a5ocr.bounds.chunked import chunked_robust_loss
from a5ocr.bounds.engine import METHODS, BoundedSequential, bounds_for
from a5ocr.bounds.loss import scatter_margins as _scatter_margins
from a5ocr.bounds.loss import worst_case_cross_entropy
from a5ocr.bounds.pruned import best_on_hardest, margin_ibp_pass, pruned_margin_bounds

Tensor = torch.Tensor


def margin_spec(labels: Tensor, num_classes: int, dtype: Optional[torch.dtype] = None) -> Tensor:
    """Margin specification: labels [B] -> C [B, K, K], row j = e_label - e_j (row ``label`` is 0)."""
    eye = torch.eye(num_classes, device=labels.device, dtype=dtype or torch.get_default_dtype())
    return eye[labels].unsqueeze(1) - eye.unsqueeze(0)


def _other_classes(labels: Tensor, num_classes: int) -> Tensor:
    """labels [B] -> [B, K-1]: the classes other than the label, in increasing order."""
    j = torch.arange(num_classes - 1, device=labels.device).unsqueeze(0)
    return j + (j >= labels.unsqueeze(1)).long()


def _num_classes(model: nn.Module, x: Tensor) -> int:
    net = BoundedSequential(model)
    return math.prod(net.shapes(tuple(x.shape[1:]))[-1])


def compute_bounds(
    model: nn.Module,
    x_lower: Tensor,
    x_upper: Tensor,
    C: Optional[Tensor] = None,
    method: str = "crown-ibp",
    bound_upper: bool = False,
    *,
    alpha_steps: int = 20,
    alpha_lr: float = 0.1,
    max_memory_gib: Optional[float] = None,
) -> tuple[Tensor, Optional[Tensor]]:
    """Bounds of C . model(x) over the box x_lower <= x <= x_upper.

    Shapes: x_lower, x_upper [B, *in]; C [B, S, *out] (or [1, S, *out]); default C = identity
    over the flattened outputs (S = numel of the output). Returns (lb [B, S], ub [B, S] or None).
    ``method`` is one of ``METHODS``; alpha-crown runs ``alpha_steps`` Adam steps of size
    ``alpha_lr`` on per-spec ReLU lower slopes and is never looser than crown.
    ``max_memory_gib``: above this estimate the final CROWN pass runs in checkpointed chunks of
    samples (same result, about 1.1-1.4x the time); None (default): 6 GiB without gradients,
    about twice the IBP pass's bounds under autograd (``budget.crown_budget_gib``). Differentiable w.r.t. the box and the model
    parameters.
    """
    lb, ub, _ = bounds_for(
        model, x_lower, x_upper, C, method, bound_upper,
        alpha_steps=alpha_steps, alpha_lr=alpha_lr, max_memory_gib=max_memory_gib,
    )
    return lb, ub


def _sound_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(torch.float64)


def margin_lower_bounds(
    model: nn.Module,
    x_lower: Tensor,
    x_upper: Tensor,
    labels: Tensor,
    method: str = "crown-ibp",
    *,
    sound: bool = False,
    **options,
) -> Tensor:
    """Lower bounds of y_label - y_j over the box: x_lower, x_upper [B, *in], labels [B] -> [B, K].

    Entry ``label`` is exactly 0; a sample is certified when all other entries are > 0.
    Only the K-1 non-trivial margins are bounded (C [B, K-1, K]) and scattered back.
    ``sound=True``: computed without gradients in float64 on a float64 copy of the model
    (the result is float64). ``options`` go to ``compute_bounds`` (alpha_steps, alpha_lr,
    max_memory_gib).
    """
    if sound:
        with torch.no_grad():
            m64 = _sound_copy(model)
            return margin_lower_bounds(m64, x_lower.double(), x_upper.double(), labels, method, **options)
    return robust_margins(model, x_lower, x_upper, labels, method, **options)


def mixed_margin_lower_bounds(
    model: nn.Module, x_lower: Tensor, x_upper: Tensor, labels: Tensor, f: float, **options
) -> Tensor:
    """The training mix f * CROWN-IBP + (1 - f) * IBP of the margin lower bounds: -> [B, K].

    Both share one IBP pass; the CROWN backward pass is skipped when f <= 1e-6 (pure IBP).
    Shapes as ``margin_lower_bounds``. f: a float (or a 0-d tensor) in [0, 1].
    ``options``: ``max_memory_gib`` (see ``compute_bounds``). Same as
    ``robust_margins(..., "crown-ibp", f=f)``.
    """
    return robust_margins(model, x_lower, x_upper, labels, "crown-ibp", f=f, **options)


# f within this distance of 0 (1) is pure IBP (pure <method>)
_F_TOL = 1e-6


def _check_mix(method: str, f, k) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown bound method {method!r} (one of: {', '.join(METHODS)})")
    if f is not None and not -_F_TOL <= float(f) <= 1.0 + _F_TOL:  # NaN fails too
        raise ValueError(f"f must be in [0, 1] (a convex mix of lower bounds), got {float(f)}")
    if k is not None and (isinstance(k, bool) or int(k) != k or k < 0):
        raise ValueError(f"k must be None or an integer >= 0, got {k!r}")


def robust_margins(
    model: nn.Module,
    x_lower: Tensor,
    x_upper: Tensor,
    labels: Tensor,
    method: str = "crown-ibp",
    f: Optional[float] = None,
    k: Optional[int] = None,
    **options,
) -> Tensor:
    """Training margin lower bounds of y_label - y_j over the box: -> [B, K] (entry ``label`` = 0).

    ``method``: one of METHODS ("ibp": f and k change nothing). ``f``: the paper's mix lb = f * <method> + (1 - f) * IBP
    (a float or 0-d tensor in [0, 1]; None = <method> alone; f <= 1e-6 is pure IBP and skips
    the relaxation, f >= 1 - 1e-6 is <method> alone). ``k``: how many margins per sample get
    <method>: the k hardest by IBP (smallest IBP lower bound, ties by class index); the other
    K-1-k keep their IBP bound. None (or k >= K-1) = all margins, k = 0 = IBP alone. IBP is
    computed once and shared. Every entry is a valid lower bound of its margin (IBP, <method>,
    or a convex combination of both). Differentiable w.r.t. the box and the weights.
    ``options``: alpha_steps, alpha_lr, max_memory_gib (see ``compute_bounds``).
    """
    _check_mix(method, f, k)
    K = _num_classes(model, x_lower)
    others = _other_classes(labels, K)
    margin = (labels, others)
    mix = f is not None and float(f) < 1.0 - _F_TOL
    if method == "ibp" or (f is not None and float(f) <= _F_TOL) or k == 0:
        lb, _, _ = bounds_for(model, x_lower, x_upper, None, "ibp", margin=margin, **options)
    elif k is None or k >= K - 1:
        tight, _, ibp = bounds_for(model, x_lower, x_upper, None, method, margin=margin, ibp_too=mix, **options)
        lb = f * tight + (1.0 - f) * ibp if mix else tight
    else:
        tight, pos, ibp = pruned_margin_bounds(model, x_lower, x_upper, labels, others, method, int(k), **options)
        if mix:
            tight = f * tight + (1.0 - f) * ibp.gather(1, pos)
        lb = ibp.scatter(1, pos, tight)
    return _scatter_margins(lb, others, K)


def robust_loss(
    model: nn.Module,
    x_lower: Tensor,
    x_upper: Tensor,
    labels: Tensor,
    method: str = "crown-ibp",
    f: Optional[float] = None,
    k: Optional[int] = None,
    **options,
) -> Tensor:
    """Differentiable upper bound of the mean cross-entropy over the box (paper Eq. 2-3): a scalar.

    ``worst_case_cross_entropy(robust_margins(...), labels)``; arguments as ``robust_margins``.
    For every x in [x_lower, x_upper] (per sample), CE(model(x), labels) <= the per-sample
    worst-case CE, since each margin lower bound is below the margin at x. The first output of
    ``robust_loss_and_margins`` (see there for the chunked CROWN-IBP pass)."""
    return robust_loss_and_margins(model, x_lower, x_upper, labels, method, f, k, **options)[0]


_OPTIONS = {"alpha_steps", "alpha_lr", "max_memory_gib", "crown_patches"}


def robust_loss_and_margins(
    model: nn.Module, x_lower: Tensor, x_upper: Tensor, labels: Tensor, method: str = "crown-ibp",
    f: Optional[float] = None, k: Optional[int] = None, *, checkpoint_chunks: bool = False, **options,
) -> tuple[Tensor, Tensor]:
    """(``robust_loss``, the margins of ``robust_margins`` detached [B, K]): the same values.

    For "crown-ibp" (any f, k) under autograd, a final CROWN pass over the memory budget
    (``max_memory_gib``, see ``compute_bounds``) runs chunk by chunk, each chunk's share of the
    loss differentiated at once and its graph freed (``chunked.chunked_robust_loss``: no
    recompute; the gradients equal the unchunked ones up to rounding). ``checkpoint_chunks``:
    through ``robust_margins`` instead (checkpointed chunks recomputed by the backward pass).
    """
    _check_mix(method, f, k)
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TypeError(f"unknown bound options: {', '.join(sorted(unknown))}")
    K = _num_classes(model, x_lower)
    ibp_only = method == "ibp" or (f is not None and float(f) <= _F_TOL) or k == 0
    if method == "crown-ibp" and not ibp_only and not checkpoint_chunks:
        mix = f if f is not None and float(f) < 1.0 - _F_TOL else None
        kk = None if k is None or k >= K - 1 else int(k)
        return chunked_robust_loss(model, x_lower, x_upper, labels, _other_classes(labels, K), mix, kk,
                                   options.get("max_memory_gib"))
    margins = robust_margins(model, x_lower, x_upper, labels, method, f, k, **options)
    return worst_case_cross_entropy(margins, labels), margins.detach()


def _auto_chunk(model: nn.Module, x: Tensor, num_specs: int, method: str) -> int:
    """Samples per chunk so that one backward A tensor stays near 256 MiB in float64."""
    if method == "ibp":
        return max(1, x.shape[0])
    net = BoundedSequential(model)
    widest = max(math.prod(s) for s in net.shapes(tuple(x.shape[1:])))
    return max(1, (256 << 20) // (8 * num_specs * widest))


def _group_size(unproven: int, num_specs: int) -> int:
    """How many margins a sample with ``unproven`` IBP-unproven margins is given to the
    relaxation: the next power of two (at most ``num_specs``), so that samples batch in a few
    groups and none is given more than twice the margins it needs."""
    return min(num_specs, 1 << max(0, unproven - 1).bit_length())


def unproven_groups(ibp_lb: Tensor) -> list[tuple[int, Tensor]]:
    """The cascade's groups from the IBP margin bounds ibp_lb [B, S]: [(k, index [m])], k
    increasing, index the samples (increasing) with some margin <= 0 whose ``_group_size`` is k."""
    unproven = (ibp_lb <= 0).sum(1)
    group = torch.tensor([_group_size(int(u), ibp_lb.shape[1]) for u in unproven.tolist()], device=ibp_lb.device)
    ks = sorted(set(group[unproven > 0].tolist()))
    return [(k, torch.nonzero((group == k) & (unproven > 0)).flatten()) for k in ks]


def ibp_first_margin_lower_bounds(
    model: nn.Module,
    x_lower: Tensor,
    x_upper: Tensor,
    labels: Tensor,
    method: str = "crown-ibp",
    *,
    chunk: Optional[int] = None,
    **options,
) -> Tensor:
    """The certification cascade per margin: -> [B, K] (entry ``label`` = 0), no gradients.

    IBP bounds every margin y_label - y_j; ``method`` (a relaxation) runs only on the margins
    that IBP leaves unproven (IBP bound <= 0), on the k hardest margins by IBP, k = the
    sample's number of unproven margins rounded up to a power of two (``_group_size``: samples
    are batched by k, ``unproven_groups``), in chunks of ``chunk`` samples (default
    ``_auto_chunk``). One IBP pass serves the whole batch: its bounds rank the margins and its
    pre-activation bounds feed every chunk's relaxation (``pruned.relax_hardest``; only the
    unproven samples' are kept, and a chunk is a view of them). Each entry is max(IBP,
    ``method``) where ``method`` ran, IBP elsewhere: a valid lower bound of its margin, at least
    the IBP one and, on every margin IBP cannot prove, at least ``method``'s. Samples that IBP
    proves entirely cost one IBP pass. Computed in the model's dtype (``certify`` gives it a
    float64 copy).
    """
    if method not in METHODS:
        raise ValueError(f"unknown bound method {method!r} (one of: {', '.join(METHODS)})")
    with torch.no_grad():
        K = _num_classes(model, x_lower)
        others = _other_classes(labels, K)
        if method == "ibp":
            lb, _, _ = bounds_for(model, x_lower, x_upper, None, "ibp", margin=(labels, others))
            return _scatter_margins(lb, others, K)
        ibp = margin_ibp_pass(model, x_lower, x_upper, labels, others)
        lb = ibp.ibp_lb
        groups = unproven_groups(lb)
        if groups:
            ibp.take_(torch.cat([idx for _, idx in groups]))  # the unproven samples, each group contiguous
        start = 0
        for k, idx in groups:
            step = chunk or _auto_chunk(model, x_lower, k, method)
            for s in range(0, idx.numel(), step):
                part = ibp.take(slice(start + s, start + min(idx.numel(), s + step)))
                lb[idx[s : s + step]] = best_on_hardest(part, method, k, **options)
            start += idx.numel()
        return _scatter_margins(lb, others, K)


def certify(
    model: nn.Module,
    x_lower: Tensor,
    x_upper: Tensor,
    labels: Tensor,
    method: str = "crown-ibp",
    *,
    chunk: Optional[int] = None,
    ibp_first: bool = False,
    **options,
) -> Tensor:
    """Certification in float64 (no gradients): x_lower, x_upper [B, *in], labels [B] -> BoolTensor [B].

    True where every margin lower bound y_label - y_j (j != label), computed in float64 on a
    float64 copy of the model, is > 0. Works in chunks of ``chunk`` samples (auto by default)
    to bound memory. ``ibp_first``: the margins come from ``ibp_first_margin_lower_bounds``
    (each margin proven by IBP or, where IBP fails, by ``method``; ``method`` runs only on
    those margins): it certifies every sample the plain ``method`` certifies, and more.
    """
    with torch.no_grad():
        m64 = _sound_copy(model)
        K = _num_classes(m64, x_lower)
        n = x_lower.shape[0]
        step = chunk or _auto_chunk(m64, x_lower, 1 if ibp_first else K - 1, method)
        out = []
        for s in range(0, n, step):
            xl = x_lower[s : s + step].double()
            xu = x_upper[s : s + step].double()
            lab = labels[s : s + step]
            if ibp_first:
                lb = ibp_first_margin_lower_bounds(m64, xl, xu, lab, method, chunk=chunk, **options)
            else:
                lb = margin_lower_bounds(m64, xl, xu, lab, method, **options)
            ok = (lb > 0).scatter(1, lab.view(-1, 1), True)
            out.append(ok.all(1))
        if not out:
            return torch.zeros(0, dtype=torch.bool, device=labels.device)
        return torch.cat(out)


__all__ = [
    "METHODS",
    "margin_spec",
    "margin_lower_bounds",
    "mixed_margin_lower_bounds",
    "robust_loss",
    "robust_loss_and_margins",
    "robust_margins",
    "compute_bounds",
    "certify",
]
