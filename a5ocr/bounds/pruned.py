"""Pruned margin bounds: the expensive relaxation only on the k hardest margins by IBP.

A CROWN(-IBP) backward pass costs in proportion to the number of specifications it carries.
Of the K-1 margins y_label - y_j of a sample, the ones that decide the worst-case loss are the
smallest; IBP (about the cost of a forward pass) ranks them. ``pruned_margin_bounds`` runs one
IBP pass, bounds every margin by IBP, picks the k smallest IBP lower bounds per sample and
gives only those to the relaxation, reusing the same IBP pre-activation bounds (no second IBP
pass). Each returned bound is a valid lower bound of its own margin whatever was selected.

The two steps are apart so that a caller can run the IBP pass once over a batch and the
relaxation on parts of it: ``margin_ibp_pass`` (-> an ``IBPPass``, whose ``take`` selects
samples) and ``relax_hardest`` (the certification cascade ``api.ibp_first_margin_lower_bounds``
and the print cascade ``camera._cascade_margins`` do this, through ``best_on_hardest``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from a5ocr.bounds.engine import (
    METHODS,
    BoundedSequential,
    _dense_margin_spec,
    _ibp_final,
    _prepare,
    relaxed_bounds,
)

Tensor = torch.Tensor


def hardest_by_ibp(ibp_lb: Tensor, k: int) -> Tensor:
    """Positions [N, k] of the k smallest entries of each row of ibp_lb [N, S] (smallest first).

    Ties go to the lower position (a stable sort); with ``others`` in increasing class order
    that is the lower class index. The selection is discrete: computed on detached values."""
    return torch.sort(ibp_lb.detach(), dim=1, stable=True).indices[:, :k]


def _rows(pair: tuple[Tensor, Tensor], index) -> tuple[Tensor, Tensor]:
    return pair[0][index], pair[1][index]


@dataclass
class IBPPass:
    """One IBP pass over N samples, as the relaxation needs it (every tensor is per sample
    along dim 0; ``net`` and ``shapes`` are shared).

    box: (c, r) [N, *shapes[net.exact_prefix]], the box the relaxation concretises over (the
    input of layer ``net.exact_prefix``); pre: {ReLU index: (l, u) [N, *shape]}, IBP
    pre-activation bounds of every ReLU; ibp_lb [N, S]: the IBP bounds of the margins
    y_labels - y_others, labels [N], others [N, S]."""

    net: BoundedSequential
    shapes: list
    box: tuple[Tensor, Tensor]
    pre: dict[int, tuple[Tensor, Tensor]]
    ibp_lb: Tensor
    labels: Tensor
    others: Tensor

    def take(self, index) -> "IBPPass":
        """The samples ``index`` (a slice: views, no copy; an index tensor: copies)."""
        return replace(self, box=_rows(self.box, index), pre={i: _rows(p, index) for i, p in self.pre.items()},
                       ibp_lb=self.ibp_lb[index], labels=self.labels[index], others=self.others[index])

    def take_(self, index) -> None:
        """``take`` in place: each tensor is replaced as soon as its copy exists, so that (when
        nothing else holds the old ones) keeping m of N samples adds one tensor's copy at a
        time, not a second set of bounds."""
        for i in list(self.pre):
            self.pre[i] = _rows(self.pre[i], index)
        self.box = _rows(self.box, index)
        self.ibp_lb, self.labels, self.others = self.ibp_lb[index], self.labels[index], self.others[index]


def margin_ibp_pass(model: nn.Module, x_lower: Tensor, x_upper: Tensor, labels: Tensor, others: Tensor) -> IBPPass:
    """The IBP pass of ``pruned_margin_bounds``: boxes x_lower, x_upper [N, *in], labels [N],
    others [N, S] -> an ``IBPPass`` (differentiable w.r.t. the box and the weights)."""
    net, shapes, c, r = _prepare(model, x_lower, x_upper)
    if len(shapes[-1]) != 1:
        raise ValueError("margin specs need a flat output")
    K = shapes[-1][0]
    boxes, pre = net.ibp_pass(c, r, stop=net._fold_start())
    spec = lambda: _dense_margin_spec(labels, others, K, x_lower.dtype)  # noqa: E731
    ibp_lb, _ = _ibp_final(net, boxes, spec, shapes, False, (labels, others))
    return IBPPass(net, shapes, boxes[net.exact_prefix], pre, ibp_lb, labels, others)


def relax_hardest(ibp: IBPPass, method: str, k: int, **options) -> tuple[Tensor, Tensor]:
    """``method``'s bounds of each sample's k hardest margins by IBP, from the pass ``ibp``:
    -> (lb [N, k] of the margins others[n, pos[n]], pos [N, k]: ``hardest_by_ibp``).
    ``options``: alpha_steps, alpha_lr, max_memory_gib, crown_patches (``relaxed_bounds``)."""
    pos = hardest_by_ibp(ibp.ibp_lb, k)
    chosen = (ibp.labels, ibp.others.gather(1, pos))
    K = ibp.shapes[-1][0]
    dtype = ibp.ibp_lb.dtype
    boxes = [None] * ibp.net.exact_prefix + [ibp.box]  # relaxed_bounds reads boxes[exact_prefix] only
    spec = lambda: _dense_margin_spec(chosen[0], chosen[1], K, dtype)  # noqa: E731
    lb, _ = relaxed_bounds(ibp.net, ibp.shapes, boxes, ibp.pre, spec, chosen, method, **options)
    return lb, pos


def best_on_hardest(ibp: IBPPass, method: str, k: int, **options) -> Tensor:
    """The cascade's step: [N, S], max(IBP, ``method``) on each sample's k hardest margins by IBP
    (``relax_hardest``), IBP on the others; each entry a valid lower bound of its margin."""
    tight, pos = relax_hardest(ibp, method, k, **options)
    return ibp.ibp_lb.scatter(1, pos, torch.maximum(tight, ibp.ibp_lb.gather(1, pos)))


def pruned_margin_bounds(
    model: nn.Module,
    x_lower: Tensor,
    x_upper: Tensor,
    labels: Tensor,
    others: Tensor,
    method: str,
    k: int,
    *,
    alpha_steps: int = 20,
    alpha_lr: float = 0.1,
    max_memory_gib: float | None = None,
    crown_patches: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Lower bounds of the margins y_label - y_j, j in others [N, S], from one shared IBP pass.

    Returns (lb [N, k]: ``method``'s bounds of the margins others[n, pos[n]], pos [N, k]:
    positions into ``others`` of the k hardest margins by IBP (``hardest_by_ibp``), ibp_lb [N, S]:
    the IBP bounds of all S margins). 1 <= k <= S; ``method`` is any of METHODS but "ibp".
    The options as ``engine.relaxed_bounds`` (the IBP pass is ``margin_ibp_pass``, the
    relaxation ``relax_hardest``).
    Differentiable w.r.t. the box and the weights (the selection itself has no gradient).
    """
    if method not in METHODS or method == "ibp":
        raise ValueError(f"pruned bounds need a relaxation method (one of {', '.join(METHODS[1:])}), got {method!r}")
    if not 1 <= k <= others.shape[1]:
        raise ValueError(f"k must be in [1, {others.shape[1]}], got {k}")
    ibp = margin_ibp_pass(model, x_lower, x_upper, labels, others)
    lb, pos = relax_hardest(ibp, method, k, alpha_steps=alpha_steps, alpha_lr=alpha_lr,
                            max_memory_gib=max_memory_gib, crown_patches=crown_patches)
    return lb, pos, ibp.ibp_lb
