"""Bounds through the camera: certificates over a set of prints (the physical threat).

For one sampled acquisition the camera is affine in the printed glyph up to its clamp
(``a5ocr.acquisition.affine``). The threat: the print w becomes w' = clip(w + dw, 0, 1) with
||dw||_inf <= eps_print, optionally together with the image attack x' = clip(x + dx, 0, 1),
||dx||_inf <= eps_a (as ``training.losses.attack_box``: the set of such x' is the clipped box).
The whole pipeline is one ``nn.Sequential`` the bound engine takes as it is:

    input z = [w' (flat), dx (flat, with eps_a)]      box: [clip(w -+ eps_print), -+ eps_a]
    CameraAffine           [affine(w'), dx + 1]        (the camera's affine map, per sample)
    ReLU, Flip, ReLU       clamp(y, 0, 1) = 1 - relu(1 - relu(y)) on the image channels
    (with eps_a) PairDifference, ReLU, Flip, ReLU, Flip:   clamp(clamp(y) + dx, 0, 1)
    the classifier

The dx channels pass the ReLUs exactly: dx + 1 >= 1 - eps_a > 0, a stable ReLU is the
identity. ``CameraAffine``'s rule gets its transpose (A -> A o L, CROWN's backward step) from
autograd on ``acquisition.affine`` itself, never a copy of the warp or the blur, so it follows
any change of the camera (a print larger than the sensor grid included). Its IBP radius relies
on the camera's structure: warp, blur and brightness have nonnegative weights (M), contrast is
c y + (1 - c) mean(y), so |L| r <= |c| M r + |1 - c| mean(M r) (``tests/test_print_threat.py``
checks it by sampling).

The camera parameters are per sample, so every net built here is tied to its batch:
certification and its IBP-first cascade build one net per subset (``certify_print``).

Entry points: ``camera_net``, ``print_box``, ``camera_margin_lower_bounds`` (training:
differentiable; ``sound=True``: float64), ``certify_print`` (float64, no gradients).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

import kornia
import torch
from torch import nn

from a5ocr import acquisition as acq
from a5ocr.acquisition import AcquisitionConfig
from a5ocr.bounds.api import (
    _sound_copy,
    _num_classes,
    _other_classes,
    _scatter_margins,
    robust_margins,
    unproven_groups,
)
from a5ocr.bounds.engine import METHODS, BoundedSequential, bounds_for
from a5ocr.bounds.pruned import best_on_hardest, margin_ibp_pass
from a5ocr.bounds.layers import LAYER_RULES, BoundChannelAffine, BoundLayer

Tensor = torch.Tensor
Params = dict[str, Tensor]

# the engine's own sample chunking (checkpointed CROWN passes) would slice the box but not the
# camera parameters: the nets here are always bounded whole
_WHOLE = {"max_memory_gib": 1e15}


def take_params(params: Params, index: Tensor) -> Params:
    """The parameters of the samples ``index`` (a LongTensor [m]): {name: [m, ...]}."""
    return {k: v.index_select(0, index.to(v.device)) for k, v in params.items()}


class CameraAffine(nn.Module):
    """The camera's affine map for fixed per-sample parameters, on a flat input.

    z [N, D] with D = prod(glyph_shape) (+ 3 R R with ``carry_dx``) -> [N, 3, R, R]
    (``affine(w)``) or [N, 6, R, R] (``[affine(w), dx + 1]``). ``params`` for N samples, or for
    one sample shared by every input (then any N). The parameters are buffers (a float64 copy
    of the module computes the camera in float64).
    """

    def __init__(self, params: Params, cfg: AcquisitionConfig, glyph_shape: tuple[int, ...], carry_dx: bool = False):
        super().__init__()
        self.names = sorted(params)
        for k in self.names:
            self.register_buffer(f"p_{k}", params[k].detach().clone())
        self.cfg = cfg
        self.glyph_shape = tuple(glyph_shape)
        self.carry_dx = carry_dx
        with torch.no_grad():
            one = self.params(torch.zeros(1, dtype=torch.long))
            y = acq.affine(torch.zeros((1,) + self.glyph_shape), one, cfg)
        self.image_shape = tuple(y.shape[1:])
        self.glyph_dim = math.prod(self.glyph_shape)
        self.in_dim = self.glyph_dim + (math.prod(self.image_shape) if carry_dx else 0)
        self._offsets: dict = {}

    @property
    def batch(self) -> int:
        return int(getattr(self, "p_angle").shape[0])

    def params(self, index: Optional[Tensor] = None) -> Params:
        p = {k: getattr(self, f"p_{k}") for k in self.names}
        return p if index is None else take_params(p, index)

    def index_for(self, n: int, repeat: int = 1) -> Tensor:
        """Parameter rows of n inputs (each repeated ``repeat`` times, specs folded into the batch)."""
        dev = getattr(self, "p_angle").device
        if self.batch == 1:
            return torch.zeros(n * repeat, dtype=torch.long, device=dev)
        if n != self.batch:
            raise ValueError(f"camera layer: {n} inputs for the parameters of {self.batch} samples")
        return torch.arange(n, device=dev).repeat_interleave(repeat)

    def out_shape(self) -> tuple[int, ...]:
        c, r, s = self.image_shape
        return (2 * c if self.carry_dx else c, r, s)

    def affine(self, w: Tensor, repeat: int = 1) -> Tensor:
        """affine(w) for w [n * repeat, D_w] (flat) -> [n * repeat, 3, R, R]."""
        n = w.shape[0] // repeat
        p = self.params(self.index_for(n, repeat))
        return acq.affine(w.reshape((w.shape[0],) + self.glyph_shape), p, self.cfg)

    def offset(self, dtype: torch.dtype, device) -> Tensor:
        """affine(0) of every parameter row: [batch, 3, R, R] (constant; cached per dtype)."""
        key = (dtype, str(device))
        if key not in self._offsets:
            with torch.no_grad():
                z = torch.zeros((self.batch,) + self.glyph_shape, dtype=dtype, device=device)
                self._offsets[key] = acq.affine(z, self.params(), self.cfg)
        return self._offsets[key]

    def forward(self, z: Tensor) -> Tensor:
        y = self.affine(z[:, : self.glyph_dim])
        if not self.carry_dx:
            return y
        return torch.cat([y, z[:, self.glyph_dim :].reshape((z.shape[0],) + self.image_shape) + 1.0], dim=1)

    def abs_linear(self, r: Tensor) -> Tensor:
        """An upper bound of |L| r for r >= 0 [n, D_w] (L: the linear part of ``affine``) -> [n, 3, R, R]."""
        n = r.shape[0]
        p = self.params(self.index_for(n))
        c = p["contrast"].to(r.dtype).view(n, 1, 1, 1)
        p1 = dict(p, contrast=torch.ones_like(p["contrast"]))  # steps 1-6 and brightness: -M w + const
        w = r.reshape((n,) + self.glyph_shape)
        m = (acq.affine(torch.zeros_like(w), p1, self.cfg) - acq.affine(w, p1, self.cfg)).clamp_min(0.0)
        mean = kornia.color.rgb_to_grayscale(m).mean(dim=(1, 2, 3), keepdim=True)
        return c.abs() * m + (1.0 - c).abs() * mean

    def transpose(self, A: Tensor) -> Tensor:
        """L^T of specs on the image: A [N|1, S, 3, R, R] -> [n, S, D_w], by autograd on ``affine``
        (the vjp of an affine map at any point is its transpose; differentiable in A)."""
        n = max(A.shape[0], self.batch)
        S = A.shape[1]
        u = A.expand((n,) + tuple(A.shape[1:])).reshape((n * S,) + tuple(A.shape[2:]))
        with torch.enable_grad():
            w0 = torch.zeros(n * S, self.glyph_dim, dtype=A.dtype, device=A.device, requires_grad=True)
            (g,) = torch.autograd.grad(self.affine(w0, S), w0, grad_outputs=u, create_graph=u.requires_grad)
        return g.view(n, S, self.glyph_dim)


class BoundCamera(BoundLayer):
    """Rules of ``CameraAffine``: exact centre, the |L| r bound above, the autograd transpose."""

    module_types = (CameraAffine,)

    def out_shape(self, in_shape):
        if tuple(in_shape) != (self.module.in_dim,):
            raise ValueError(f"camera layer expects a flat input of {self.module.in_dim}, got {in_shape}")
        return self.module.out_shape()

    def ibp(self, c, r):
        m = self.module
        out_r = m.abs_linear(r[:, : m.glyph_dim])
        if m.carry_dx:
            out_r = torch.cat([out_r, r[:, m.glyph_dim :].reshape((r.shape[0],) + m.image_shape)], dim=1)
        return m(c), out_r

    def backward_one(self, A, in_shape):
        m = self.module
        k = m.image_shape[0]
        Ai = A[:, :, :k]
        g = m.transpose(Ai)
        bias = (Ai * m.offset(A.dtype, A.device).unsqueeze(1)).flatten(2).sum(2)
        if m.carry_dx:
            Ad = A[:, :, k:]
            g = torch.cat([g, Ad.expand((g.shape[0],) + tuple(Ad.shape[1:])).flatten(2)], dim=2)
            bias = bias + Ad.flatten(2).sum(2)  # the +1 offset of the carried dx
        return g, bias


class ChannelAffine(nn.Module):
    """y = x * scale[c] + shift[c] with fixed (buffer) scale and shift [C]; x [N, C, H, W]."""

    def __init__(self, scale, shift):
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).flatten())
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32).flatten())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.view(-1, 1, 1) + self.shift.view(-1, 1, 1)


class BoundFixedChannelAffine(BoundChannelAffine):
    """``ChannelAffine`` under the per-channel affine rules of ``Normalize`` / ``BatchNorm2d``."""

    module_types = (ChannelAffine,)

    def __init__(self, module):
        BoundLayer.__init__(self, module)

    def scale_shift(self):
        return self.module.scale, self.module.shift


class PairDifference(nn.Module):
    """[N, 2C, H, W] -> [N, C, H, W]: the second half of the channels minus the first."""

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1] // 2
        return x[:, c:] - x[:, :c]


class BoundPairDifference(BoundLayer):
    module_types = (PairDifference,)

    def out_shape(self, in_shape):
        if len(in_shape) != 3 or in_shape[0] % 2:
            raise ValueError(f"PairDifference expects [2C, H, W] inputs, got {in_shape}")
        return (in_shape[0] // 2,) + tuple(in_shape[1:])

    def ibp(self, c, r):
        k = c.shape[1] // 2
        return c[:, k:] - c[:, :k], r[:, k:] + r[:, :k]

    def backward_one(self, A, in_shape):
        return torch.cat([-A, A], dim=2), 0.0


for _cls in (BoundCamera, BoundFixedChannelAffine, BoundPairDifference):
    for _t in _cls.module_types:
        LAYER_RULES[_t] = _cls


def _flip(channels: int, keep: int = 0, dtype: torch.dtype = torch.float32) -> ChannelAffine:
    """1 - x on the first ``channels`` channels, the identity on ``keep`` more."""
    return ChannelAffine([-1.0] * channels + [1.0] * keep, [1.0] * channels + [0.0] * keep).to(dtype)


def camera_net(model: nn.Module, params: Params, cfg: AcquisitionConfig, glyph_shape: tuple[int, ...],
               image_attack: bool) -> nn.Sequential:
    """The pipeline print -> camera -> clamp (-> + dx -> clamp) -> ``model`` as one bounded net
    (see the module docstring); its input is ``print_box``'s flat z."""
    cam = CameraAffine(params, cfg, glyph_shape, carry_dx=image_attack)
    k, dt = cam.image_shape[0], params["angle"].dtype
    if not image_attack:
        return nn.Sequential(cam, nn.ReLU(), _flip(k, 0, dt), nn.ReLU(), _flip(k, 0, dt), model)
    return nn.Sequential(cam, nn.ReLU(), _flip(k, k, dt), nn.ReLU(), PairDifference(),
                         nn.ReLU(), _flip(k, 0, dt), nn.ReLU(), _flip(k, 0, dt), model)


def print_box(w: Tensor, eps_print: float, eps_a: float, image_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """The input box of ``camera_net``: w [N, *glyph] -> (lower, upper) [N, D]: the print box
    clipped to the ink range [0, 1], then (with eps_a > 0) [-eps_a, eps_a] for dx [3, R, R]."""
    wf = w.flatten(1)
    lo, hi = (wf - eps_print).clamp(0.0, 1.0), (wf + eps_print).clamp(0.0, 1.0)
    if eps_a > 0:
        d = torch.full((w.shape[0], math.prod(image_shape)), float(eps_a), dtype=w.dtype, device=w.device)
        lo, hi = torch.cat([lo, -d], 1), torch.cat([hi, d], 1)
    return lo, hi


def _check_gray(w: Tensor) -> None:
    if w.dim() == 4 and w.shape[1] != 1:
        raise ValueError("bounds through the camera need gray glyphs ([N, R, R] or [N, 1, R, R]): "
                         "saturation and hue are identities only there")


def camera_margin_lower_bounds(
    model: nn.Module, w: Tensor, params: Params, cfg: AcquisitionConfig, labels: Tensor, eps_print: float,
    eps_a: float = 0.0, method: str = "ibp", *, f: Optional[float] = None, k: Optional[int] = None,
    sound: bool = False, **options,
) -> Tensor:
    """Lower bounds of y_label - y_j over the joint threat: w [N, *glyph] (gray ink in [0, 1]),
    ``params`` of N acquisitions, labels [N] -> [N, K] (entry ``label`` = 0).

    ``method``, ``f``, ``k``: as ``bounds.robust_margins`` (training: differentiable w.r.t. w
    and the weights). ``sound=True``: float64 on float64 copies, no gradients.
    """
    _check_gray(w)
    if sound:
        with torch.no_grad():
            m64 = _sound_copy(model)
            p64 = {n: v.double() if v.is_floating_point() else v for n, v in params.items()}
            return camera_margin_lower_bounds(m64, w.double(), p64, cfg, labels, eps_print, eps_a, method, f=f, k=k,
                                              **options)
    gs = tuple(w.shape[1:])
    net = camera_net(model, params, cfg, gs, eps_a > 0)
    lo, hi = print_box(w, eps_print, eps_a, net[0].image_shape)
    return robust_margins(net, lo, hi, labels, method, f=f, k=k, **options, **_WHOLE)


def _cascade_margins(model, w, params, cfg, labels, eps_print, eps_a, method, **options) -> Tensor:
    """``bounds.ibp_first_margin_lower_bounds`` through the camera (float64 inputs, no
    gradients). One IBP pass over the chunk's net; the samples are grouped the same way
    (``unproven_groups``) and, since a camera net holds the parameters of its own samples only,
    each group's relaxation runs on the group's own net, from the group's rows of that pass."""
    gs = tuple(w.shape[1:])
    net = camera_net(model, params, cfg, gs, eps_a > 0)
    lo, hi = print_box(w, eps_print, eps_a, net[0].image_shape)
    K = _num_classes(net, lo)
    others = _other_classes(labels, K)
    with torch.no_grad():
        if method == "ibp":
            return _scatter_margins(bounds_for(net, lo, hi, None, "ibp", margin=(labels, others))[0], others, K)
        ibp = margin_ibp_pass(net, lo, hi, labels, others)
        lb = ibp.ibp_lb
        for kk, i in unproven_groups(lb):
            sub = camera_net(model, take_params(params, i), cfg, gs, eps_a > 0)
            lb[i] = best_on_hardest(replace(ibp.take(i), net=BoundedSequential(sub)), method, kk, **options, **_WHOLE)
    return _scatter_margins(lb, others, K)


def certify_print(
    model: nn.Module, w: Tensor, params: Params, cfg: AcquisitionConfig, labels: Tensor, eps_print: float,
    eps_a: float = 0.0, method: str = "crown-ibp", *, ibp_first: bool = False, chunk: int = 64, **options,
) -> Tensor:
    """Sound (float64) certificate over the joint threat: BoolTensor [N], True where every margin
    lower bound is > 0. ``ibp_first``: per margin, IBP or (where IBP fails) ``method``.
    In chunks of ``chunk`` samples (a net per chunk)."""
    if method not in METHODS:
        raise ValueError(f"unknown bound method {method!r} (one of: {', '.join(METHODS)})")
    _check_gray(w)
    n = w.shape[0]
    out = []
    with torch.no_grad():
        m64 = _sound_copy(model)
        for s in range(0, n, chunk):
            i = torch.arange(s, min(n, s + chunk), device=labels.device)
            p = {k: v.double() if v.is_floating_point() else v for k, v in take_params(params, i).items()}
            wb, lab = w[s : s + chunk].double(), labels[s : s + chunk]
            if ibp_first:
                lb = _cascade_margins(m64, wb, p, cfg, lab, eps_print, eps_a, method, **options)
            else:
                lb = camera_margin_lower_bounds(m64, wb, p, cfg, lab, eps_print, eps_a, method, **options)
            out.append(((lb > 0).scatter(1, lab.view(-1, 1), True)).all(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=labels.device)


__all__ = [
    "CameraAffine",
    "camera_margin_lower_bounds",
    "camera_net",
    "certify_print",
    "print_box",
    "take_params",
]
