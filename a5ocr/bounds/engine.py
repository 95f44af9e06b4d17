"""The bounded view of a sequential classifier and the bound algorithms (IBP, CROWN, alpha-CROWN).

Notation: N samples, S specifications, a specification matrix C [N, S, *out] (usually out = (K,)).
The input set is the box [x_L, x_U] ([N, *in]); lower bounds of C . f(x) over the box are [N, S].

Everything here is a pure function of (model, box, C): the view holds no per-call state.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.utils.checkpoint
from torch import nn

from a5ocr.bounds.budget import _CROWN_WORK_FACTOR, crown_budget_gib
from a5ocr.bounds.kernels import _MarginLinearIBP, concretize
from a5ocr.bounds.layers import BoundLayer, BoundLinear, BoundReLU, ReLURelaxation, rule_for
from a5ocr.bounds.patches import patch_intermediate, patch_plan

Tensor = torch.Tensor

METHODS = ("ibp", "crown", "crown-ibp", "alpha-crown")

# CROWN intermediate bounds: elements of one backward A tensor (chunks of specifications).
_CHUNK_ELEMENTS = 1 << 23


def _flatten_sequential(model: nn.Module) -> list[nn.Module]:
    out = []
    for m in model:
        if isinstance(m, nn.Sequential):
            out.extend(_flatten_sequential(m))
        else:
            out.append(m)
    return out


class BoundedSequential:
    """A bounded view of an ``nn.Sequential`` classifier (nested Sequentials are flattened).

    ``layers[i]`` is the rule object of the i-th leaf layer. Raises TypeError on a
    non-Sequential model or an unsupported layer (naming it).
    """

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Sequential):
            raise TypeError(
                f"bound engine: the model must be an nn.Sequential (possibly nested), got {type(model).__name__}"
            )
        mods = _flatten_sequential(model)
        if not mods:
            raise ValueError("bound engine: empty model")
        self.layers: list[BoundLayer] = [rule_for(m) for m in mods]
        # leading layers that map a box to a box exactly (Normalize, BatchNorm, Flatten, ReLU, ...)
        p = 0
        while p < len(self.layers) and self.layers[p].box_exact:
            p += 1
        self.exact_prefix = p

    # -- shapes and plain forward -----------------------------------------------------------

    def shapes(self, in_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Per-sample shapes: shapes[i] is the input of layer i, shapes[-1] the output."""
        out = [tuple(in_shape)]
        for layer in self.layers:
            out.append(tuple(layer.out_shape(out[-1])))
        return out

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    # -- IBP --------------------------------------------------------------------------------

    def ibp_pass(
        self, c: Tensor, r: Tensor, stop: int, collect: bool = True
    ) -> tuple[list, dict[int, tuple[Tensor, Tensor]]]:
        """Interval propagation through layers[:stop].

        Returns (boxes, pre): boxes[i] = (c, r) at the input of layer i for i <= stop (None
        where not kept: only the network input, the exact-prefix output and layer ``stop``'s
        input are kept), pre[i] =
        (l, u) pre-activation bounds [N, *shape] at the input of every ReLU layer i < stop
        (only with ``collect``; plain IBP does not need them).
        """
        boxes: list = [None] * (stop + 1)
        pre: dict[int, tuple[Tensor, Tensor]] = {}
        boxes[0] = (c, r)
        for i in range(stop):
            layer = self.layers[i]
            if collect and isinstance(layer, BoundReLU):
                pre[i] = (c - r, c + r)
            c, r = layer.ibp(c, r)
            if i + 1 == self.exact_prefix or i + 1 == stop:
                boxes[i + 1] = (c, r)
        return boxes, pre

    def _fold_start(self) -> int:
        """Index of the layer into which a final spec is folded for IBP (last mixing affine layer
        reached through trailing affine layers), or len(layers) when the net ends in a ReLU."""
        j = len(self.layers)
        while j > self.exact_prefix and self.layers[j - 1].affine:
            j -= 1
            if self.layers[j].mixing:
                return j
        return len(self.layers)

    # -- CROWN backward ---------------------------------------------------------------------

    def backward_bound(
        self,
        start: int,
        A: Tensor,
        shapes: list,
        pre: dict[int, tuple[Tensor, Tensor]],
        box: tuple[Tensor, Tensor],
        *,
        lower: bool = True,
        upper: bool = False,
        alphas: Optional[dict[int, Tensor]] = None,
        relax_cache: Optional[dict[int, ReLURelaxation]] = None,
    ) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """Linear bounds of A . (output of layer ``start``) over the box, by backward propagation.

        A [N|1, S, *shapes[start+1]]; pre: pre-activation bounds of every ReLU in
        [exact_prefix, start]; box = (c, r) at the input of layer ``exact_prefix``;
        alphas: optional lower slopes per ReLU index ([N, 1|S, *shape]).
        Returns (lb [N, S] or None, ub [N, S] or None).
        """
        A_l = A if lower else None
        A_u = A if upper else None
        b_l: Tensor | float = 0.0
        b_u: Tensor | float = 0.0
        for i in range(start, self.exact_prefix - 1, -1):
            layer = self.layers[i]
            relax = None
            if isinstance(layer, BoundReLU):
                if alphas is not None and i in alphas:
                    relax = layer.relaxation(*pre[i], alpha=alphas[i])
                elif relax_cache is not None and i in relax_cache:
                    relax = relax_cache[i]
                else:
                    relax = layer.relaxation(*pre[i])
                    if relax_cache is not None:
                        relax_cache[i] = relax
            A_l, A_u, bl, bu = layer.backward(A_l, A_u, shapes[i], relax)
            b_l = b_l + bl
            b_u = b_u + bu
        c, r = box
        lb = concretize(A_l, c, r) + b_l if lower else None
        ub = concretize(A_u, c, r, upper=True) + b_u if upper else None
        return lb, ub

    def _ibp_exact_at(self, k: int) -> bool:
        """True when IBP pre-activation bounds at the input of layer k are exact (affine prefix
        after the box-exact prefix with at most one mixing layer)."""
        mixing = 0
        for i in range(self.exact_prefix, k):
            layer = self.layers[i]
            if not layer.affine:
                return False
            mixing += int(layer.mixing)
        return mixing <= 1

    def crown_intermediate(
        self,
        shapes: list,
        pre: dict[int, tuple[Tensor, Tensor]],
        box: tuple[Tensor, Tensor],
        stop: int,
        chunk_elements: int = _CHUNK_ELEMENTS,
        patches: bool = True,
    ) -> dict[int, tuple[Tensor, Tensor]]:
        """Tighten IBP pre-activation bounds of every ReLU before ``stop`` by CROWN (in order).

        Only neurons that the current bounds call unstable (for some sample) are bounded by
        backward passes from their layer, in chunks of specifications; the result is the
        intersection of the CROWN and IBP bounds. With ``patches``, layers whose specs start at
        a convolution go backward in window form (``a5ocr.bounds.patches``) where that is
        smaller; ``patches=False`` is the dense reference path (the same bounds).
        Returns a new dict {i: (l, u)} ([N, *shape]).
        """
        out = dict(pre)
        cache: dict[int, ReLURelaxation] = {}

        def relax_for(i: int) -> ReLURelaxation:
            if i not in cache:
                cache[i] = self.layers[i].relaxation(*out[i])
            return cache[i]

        for k in sorted(pre):
            if k >= stop or k <= self.exact_prefix or self._ibp_exact_at(k):
                continue
            l, u = out[k]
            N = l.shape[0]
            lf, uf = l.reshape(N, -1), u.reshape(N, -1)
            unstable = ((lf < 0) & (uf > 0)).any(0)
            if not bool(unstable.any()):
                continue
            if patches and patch_plan(self.layers, self.exact_prefix, k, shapes) is not None:
                lnew, unew = patch_intermediate(self.layers, self.exact_prefix, k, shapes, relax_for, box, unstable,
                                                lf, uf, chunk_elements)
            else:
                lnew, unew = self._crown_dense(k, shapes, out, box, unstable, cache, chunk_elements, lf, uf)
            out[k] = (lnew.view_as(l), unew.view_as(u))
        return out

    def _crown_dense(self, k, shapes, pre, box, unstable, cache, chunk_elements, lf, uf):
        """Dense CROWN bounds of the ``unstable`` neurons ([M] mask) at the input of ReLU k, in
        chunks of one-hot specs [1, m, *shape]; the others keep (lf, uf) [N, M]."""
        N, M = lf.shape
        idx_all = unstable.nonzero().flatten()
        widest = max(math.prod(s) for s in shapes[self.exact_prefix : k + 1])
        m = max(1, chunk_elements // max(1, N * widest))
        lnew, unew = lf.clone(), uf.clone()
        for s in range(0, idx_all.numel(), m):
            idx = idx_all[s : s + m]
            eye = torch.zeros(idx.numel(), M, dtype=lf.dtype, device=lf.device)
            eye[torch.arange(idx.numel(), device=lf.device), idx] = 1.0
            A = eye.view((1, idx.numel()) + tuple(shapes[k]))
            lb, ub = self.backward_bound(k - 1, A, shapes, pre, box, lower=True, upper=True, relax_cache=cache)
            lnew[:, idx] = torch.maximum(lf[:, idx], lb)
            unew[:, idx] = torch.minimum(uf[:, idx], ub)
        return lnew, unew


# ----------------------------------------------------------------------------------------
# the algorithms


def _check_box(x_lower: Tensor, x_upper: Tensor) -> None:
    if x_lower.shape != x_upper.shape:
        raise ValueError(f"x_lower {tuple(x_lower.shape)} and x_upper {tuple(x_upper.shape)} differ in shape")


def margin_fold(W: Tensor, b: Optional[Tensor], labels: Tensor, others: Tensor) -> tuple[Tensor, Tensor | float]:
    """The margin spec folded into the last Linear (differentiable): (A [N, S, D], bias [N, S] or 0.0)."""
    A = W.index_select(0, labels).unsqueeze(1) - W.index_select(0, others.flatten()).view(others.shape + W.shape[1:])
    bias = (b[labels].unsqueeze(1) - b[others]) if b is not None else 0.0
    return A, bias


def _ibp_final(net: BoundedSequential, boxes, C, shapes, upper: bool, margin=None) -> tuple[Tensor, Optional[Tensor]]:
    """IBP bound of C . f with C folded into the last affine mixing layer.

    ``margin`` = (labels [N], others [N, S]) describes C as margin rows (then C may be a
    callable building the dense spec on demand)."""
    j = net._fold_start()
    L = len(net.layers)
    last = net.layers[-1]
    c, r = boxes[j]
    if margin is not None and not upper and j == L - 1 and isinstance(last, BoundLinear) and c.dim() == 2:
        lb = _MarginLinearIBP.apply(last.module.weight, last.module.bias, c, r, margin[0], margin[1])
        return lb, None
    C = C() if callable(C) else C
    A_l, A_u = C, (C if upper else None)
    b_l: Tensor | float = 0.0
    b_u: Tensor | float = 0.0
    for i in range(L - 1, j - 1, -1):
        A_l, A_u, bl, bu = net.layers[i].backward(A_l, A_u, shapes[i])
        b_l, b_u = b_l + bl, b_u + bu
    lb = concretize(A_l, c, r) + b_l
    ub = concretize(A_u, c, r, upper=True) + b_u if upper else None
    return lb, ub


def _prepare(model, x_lower, x_upper):
    _check_box(x_lower, x_upper)
    net = BoundedSequential(model)
    shapes = net.shapes(tuple(x_lower.shape[1:]))
    c = (x_upper + x_lower) * 0.5
    r = (x_upper - x_lower) * 0.5
    return net, shapes, c, r


def _alpha_optimise(
    net: BoundedSequential,
    C: Tensor,
    shapes,
    pre,
    box,
    steps: int,
    lr: float,
) -> dict[int, Tensor]:
    """Optimise per-spec lower ReLU slopes (alpha-CROWN) for the lower bound of C . f.

    Intermediate bounds ``pre`` are fixed (detached). Projected Adam ascent on alphas in
    [0, 1], initialised at CROWN's adaptive slopes; returns the best alphas per (sample, spec)
    as {ReLU index: [N, S, *shape]} (detached).
    """
    L = len(net.layers)
    relu_ids = [i for i in range(net.exact_prefix, L) if isinstance(net.layers[i], BoundReLU)]
    pre_d = {i: (l.detach(), u.detach()) for i, (l, u) in pre.items()}
    box_d = (box[0].detach(), box[1].detach())
    C_d = C.detach()
    S = C.shape[1]
    alphas = {}
    for i in relu_ids:
        l, u = pre_d[i]
        a0 = BoundReLU.adaptive_alpha(l, u).unsqueeze(1)
        alphas[i] = a0.expand((a0.shape[0], S) + tuple(a0.shape[2:])).clone().requires_grad_(True)
    best = {i: a.detach().clone() for i, a in alphas.items()}
    best_lb = None
    if not relu_ids or steps <= 0:
        return best
    opt = torch.optim.Adam(list(alphas.values()), lr=lr)
    with torch.enable_grad():
        for _ in range(steps + 1):
            lb, _ = net.backward_bound(L - 1, C_d, shapes, pre_d, box_d, alphas=alphas)
            with torch.no_grad():
                if best_lb is None:
                    best_lb = lb.detach().clone()
                    improved = None
                else:
                    improved = lb > best_lb
                    best_lb = torch.where(improved, lb, best_lb)
                    for i in relu_ids:
                        m = improved.view(improved.shape + (1,) * (alphas[i].dim() - 2))
                        best[i] = torch.where(m, alphas[i].detach(), best[i])
            if _ == steps:
                break
            opt.zero_grad(set_to_none=True)
            (-lb.sum()).backward(inputs=list(alphas.values()))
            opt.step()
            with torch.no_grad():
                for a in alphas.values():
                    a.clamp_(0.0, 1.0)
    return best


def crown_chunk(net: BoundedSequential, shapes, pre_c, box_c, spec, margin, upper: bool, lo: int, hi: int):
    """The final CROWN pass on the samples lo:hi, whose pre-activation bounds ``pre_c`` and box
    ``box_c`` are given (rows lo:hi only); ``spec`` and ``margin`` cover all samples.
    With a margin spec and a last Linear, the spec is folded by gathers.
    Returns (lb [hi-lo, S], ub [hi-lo, S] or None)."""
    L = len(net.layers)
    last = net.layers[-1]
    ub = None
    if margin is not None and isinstance(last, BoundLinear):
        A, bias = margin_fold(last.module.weight, last.module.bias, margin[0][lo:hi], margin[1][lo:hi])
        lb, _ = net.backward_bound(L - 2, A, shapes, pre_c, box_c)
        lb = lb + bias
        if upper:
            C = spec()
            _, ub = net.backward_bound(L - 1, C[lo:hi], shapes, pre_c, box_c, lower=False, upper=True)
        return lb, ub
    C = spec()
    C = C if C.shape[0] == 1 else C[lo:hi]
    return net.backward_bound(L - 1, C, shapes, pre_c, box_c, lower=True, upper=upper)


def final_chunk(net: BoundedSequential, shapes, pre, box, num_specs: int, upper: bool,
                max_memory_gib: Optional[float]) -> int:
    """Samples per chunk of the final CROWN pass: its estimated memory (``_CROWN_WORK_FACTOR``
    times the widest A tensor) within ``crown_budget_gib``; >= the batch size: one piece."""
    widest = max(math.prod(sh) for sh in shapes[net.exact_prefix :])
    per_sample = num_specs * widest * box[0].element_size() * _CROWN_WORK_FACTOR * (2 if upper else 1)
    return max(1, int(crown_budget_gib(max_memory_gib, pre) * 2**30 // max(1, per_sample)))


def _crown_final(net: BoundedSequential, shapes, pre, box, spec, margin, upper: bool, max_memory_gib: Optional[float]):
    """The final CROWN backward pass (lower, optionally upper) for ``crown``/``crown-ibp``.

    When the estimated memory exceeds ``max_memory_gib`` (``final_chunk``), samples are
    processed in chunks (``crown_chunk``); under autograd each chunk is checkpointed (its
    backward pass recomputes it), so only one chunk's graph is alive (the training loss avoids
    the recompute: ``a5ocr.bounds.chunked``). Returns (lb [N, S], ub [N, S] or None).
    """
    c, r = box
    N = c.shape[0]
    S = margin[1].shape[1] if margin is not None else spec().shape[1]
    chunk = final_chunk(net, shapes, pre, box, S, upper, max_memory_gib)
    relu_ids = sorted(pre)

    def run(lo: int, hi: int, c_, r_, *pre_flat):
        pre_c = {i: (pre_flat[2 * k], pre_flat[2 * k + 1]) for k, i in enumerate(relu_ids)}
        lb, ub = crown_chunk(net, shapes, pre_c, (c_, r_), spec, margin, upper, lo, hi)
        return (lb, ub) if upper else (lb,)

    if chunk >= N:
        return crown_chunk(net, shapes, pre, box, spec, margin, upper, 0, N)
    grad = torch.is_grad_enabled()
    lbs, ubs = [], []
    for lo in range(0, N, chunk):
        hi = min(N, lo + chunk)
        args = [c[lo:hi], r[lo:hi]] + [t[lo:hi] for i in relu_ids for t in pre[i]]
        if grad:
            out = torch.utils.checkpoint.checkpoint(run, lo, hi, *args, use_reentrant=False)
        else:
            out = run(lo, hi, *args)
        lbs.append(out[0])
        if upper:
            ubs.append(out[1])
    return torch.cat(lbs), (torch.cat(ubs) if upper else None)


def _dense_margin_spec(labels: Tensor, others: Tensor, num_classes: int, dtype) -> Tensor:
    """C [N, S, K] with rows e_label - e_j for j in others [N, S]."""
    eye = torch.eye(num_classes, device=labels.device, dtype=dtype)
    return eye[labels].unsqueeze(1) - eye[others]


def bounds_for(
    model: nn.Module,
    x_lower: Tensor,
    x_upper: Tensor,
    C: Optional[Tensor],
    method: str,
    bound_upper: bool = False,
    *,
    margin: Optional[tuple[Tensor, Tensor]] = None,
    alpha_steps: int = 20,
    alpha_lr: float = 0.1,
    ibp_too: bool = False,
    max_memory_gib: Optional[float] = None,
    crown_patches: bool = True,
):
    """Core of ``compute_bounds``: returns (lb, ub or None, ibp_lb or None).

    ``margin`` = (labels [N], others [N, S]) gives the spec as margin rows e_label - e_j (then
    C must be None): the last Linear is folded by gathers. With ``ibp_too`` (any method but ibp)
    the IBP lower bound from the same IBP pass is also returned. ``max_memory_gib``: the final
    CROWN pass runs in checkpointed chunks of samples when its estimated memory is larger (None:
    ``crown_budget_gib``'s default for the grad mode).
    ``crown_patches=False``: intermediate CROWN bounds by the dense reference path only."""
    if method not in METHODS:
        raise ValueError(f"unknown bound method {method!r} (one of: {', '.join(METHODS)})")
    net, shapes, c, r = _prepare(model, x_lower, x_upper)
    out_shape = tuple(shapes[-1])
    if margin is not None:
        if C is not None or len(out_shape) != 1:
            raise ValueError("margin specs need C=None and a flat output")
        K = out_shape[0]
        spec = lambda: _dense_margin_spec(margin[0], margin[1], K, x_lower.dtype)  # noqa: E731
    else:
        if C is None:
            K = math.prod(out_shape)
            C = torch.eye(K, dtype=x_lower.dtype, device=x_lower.device).view((1, K) + out_shape)
            C = C.expand((x_lower.shape[0],) + tuple(C.shape[1:]))
        if tuple(C.shape[2:]) != out_shape or C.shape[0] not in (1, x_lower.shape[0]):
            raise ValueError(f"spec C {tuple(C.shape)} does not fit outputs [{x_lower.shape[0]}, S, {out_shape}]")
        C = C.to(dtype=x_lower.dtype)
        spec = lambda: C  # noqa: E731

    if method == "ibp":
        boxes, _ = net.ibp_pass(c, r, stop=net._fold_start(), collect=False)
        lb, ub = _ibp_final(net, boxes, spec, shapes, bound_upper, margin)
        return lb, ub, None

    # IBP up to the layer the spec folds into: covers every ReLU (only affine layers follow it)
    boxes, pre = net.ibp_pass(c, r, stop=net._fold_start())
    ibp_lb = None
    if ibp_too:
        ibp_lb, _ = _ibp_final(net, boxes, spec, shapes, False, margin)
    lb, ub = relaxed_bounds(net, shapes, boxes, pre, spec, margin, method, bound_upper,
                            alpha_steps=alpha_steps, alpha_lr=alpha_lr, max_memory_gib=max_memory_gib,
                            crown_patches=crown_patches)
    return lb, ub, ibp_lb


def relaxed_bounds(net: BoundedSequential, shapes, boxes, pre, spec, margin, method: str, bound_upper: bool = False, *,
                   alpha_steps: int = 20, alpha_lr: float = 0.1, max_memory_gib: Optional[float] = None,
                   crown_patches: bool = True):
    """The linear-relaxation part of ``crown`` / ``crown-ibp`` / ``alpha-crown`` after the IBP pass.

    ``boxes, pre`` from ``net.ibp_pass(c, r, net._fold_start())``; ``spec`` a callable giving
    C [N|1, S, *out]; ``margin`` and ``crown_patches`` as in ``bounds_for``. Returns (lb [N, S], ub or None)."""
    L = len(net.layers)
    box = boxes[net.exact_prefix]
    if method in ("crown", "alpha-crown"):
        pre = net.crown_intermediate(shapes, pre, box, stop=L, patches=crown_patches)
    if method in ("crown-ibp", "crown"):
        return _crown_final(net, shapes, pre, box, spec, margin, bound_upper, max_memory_gib)
    if method != "alpha-crown":
        raise ValueError(f"no linear relaxation for bound method {method!r}")
    # alpha-crown: never looser than crown (elementwise max with the crown bound)
    C = spec()
    lb0, _ = net.backward_bound(L - 1, C, shapes, pre, box)
    best = _alpha_optimise(net, C, shapes, pre, box, alpha_steps, alpha_lr)
    lb1, _ = net.backward_bound(L - 1, C, shapes, pre, box, alphas=best)
    lb = torch.maximum(lb0, lb1)
    ub = None
    if bound_upper:
        ub0, _ = net.backward_bound(L - 1, -C, shapes, pre, box)
        best_u = _alpha_optimise(net, -C, shapes, pre, box, alpha_steps, alpha_lr)
        ub1, _ = net.backward_bound(L - 1, -C, shapes, pre, box, alphas=best_u)
        ub = -torch.maximum(ub0, ub1)
    return lb, ub
