"""Per-layer bound rules (one class per layer type, auto_LiRPA-style).

Every rule class wraps one ``nn.Module`` and owns:

* ``forward(x)``: the plain layer;
* ``out_shape(in_shape)``: the per-sample output shape (no batch dimension);
* ``ibp(c, r)``: interval propagation in centre/radius form, c, r [N, *in] -> [N, *out];
* ``backward(A_l, A_u, in_shape, relax=None)``: backward propagation of linear bounds.
  A_l / A_u are [N or 1, S, *out] (S specifications, any of them may be None); returns
  (A_l', A_u', bias_l, bias_u) with A' [N or 1, S, *in] and bias [N or 1, S] (or 0.0 when
  the layer adds no constant), such that for every input z of the layer with the given
  pre-activation bounds: A_l . layer(z) >= A_l' . z + bias_l and A_u . layer(z) <= A_u' . z + bias_u.

``ReLU`` additionally owns its linear relaxation (``BoundReLU.relaxation``).

Adding a layer type = one class here + one entry in ``LAYER_RULES``. The autograd kernels the
rules call (convolution adjoint, ReLU steps) live in ``a5ocr.bounds.kernels``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from a5ocr.bounds.kernels import ReLURelaxation, _ReLUIBP, conv_adjoint, relu_lower_backward
from a5ocr.bounds.patches import Window, window_dot
from a5ocr.normalize import Normalize

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------
# base class


class BoundLayer:
    """Rules of one layer. Subclasses set ``module_types`` and the flags below."""

    module_types: tuple[type, ...] = ()
    #: an affine map (Linear, Conv, per-channel affine, pooling by averaging, reshape)
    affine: bool = True
    #: maps a box to a box exactly (elementwise monotone maps and reshapes)
    box_exact: bool = False
    #: mixes neurons (not elementwise); an affine prefix with at most one such layer is IBP-exact
    mixing: bool = True
    #: has window-form rules (``patch_window``, ``backward_patch``; see ``a5ocr.bounds.patches``)
    patchable: bool = False

    def __init__(self, module: nn.Module):
        self.module = module

    @property
    def name(self) -> str:
        return type(self.module).__name__

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def ibp(self, c: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def backward_one(self, A: Tensor, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor | float]:
        """Affine layers: A [N|1, S, *out] -> (A W [N|1, S, *in], A b [N|1, S] or 0.0)."""
        raise NotImplementedError

    def backward(self, A_l, A_u, in_shape, relax=None):
        """See the module docstring. Affine layers apply the same map to both sides."""
        outs = []
        for A in (A_l, A_u):
            outs.append((None, 0.0) if A is None else self.backward_one(A, in_shape))
        return outs[0][0], outs[1][0], outs[0][1], outs[1][1]

    def patch_window(self, win: Window) -> Window:
        """Window-form specs: the windows at this layer's input given those at its output."""
        return win

    def backward_patch_one(self, A: Tensor, win: Window, in_shape) -> tuple[Tensor, Tensor | float]:
        """Affine layers in window form: A [N|1, P, S, kh, kw, C] -> (A' on the input windows, bias [N|1, P, S])."""
        raise NotImplementedError

    def backward_patch(self, A_l, A_u, win: Window, in_shape, relax=None):
        """``backward`` for window-form specs (``a5ocr.bounds.patches``): returns
        (A_l', A_u', bias_l, bias_u, input windows). Affine layers apply the same map to both sides."""
        outs = [(None, 0.0) if A is None else self.backward_patch_one(A, win, in_shape) for A in (A_l, A_u)]
        return outs[0][0], outs[1][0], outs[0][1], outs[1][1], self.patch_window(win)


# ----------------------------------------------------------------------------------------
# affine layers


class BoundLinear(BoundLayer):
    """y = x W^T + b. Shapes: [N, in] -> [N, out]."""

    module_types = (nn.Linear,)

    def out_shape(self, in_shape):
        if len(in_shape) != 1 or in_shape[0] != self.module.in_features:
            raise ValueError(f"Linear expects a flat input of {self.module.in_features} features, got {in_shape}")
        return (self.module.out_features,)

    def ibp(self, c, r):
        w = self.module.weight
        return F.linear(c, w, self.module.bias), F.linear(r, w.abs())

    def backward_one(self, A, in_shape):
        w, b = self.module.weight, self.module.bias
        A_new = torch.matmul(A, w)
        bias = torch.matmul(A, b) if b is not None else 0.0
        return A_new, bias


class BoundConv2d(BoundLayer):
    """2-D convolution (zero padding). Shapes: [N, Cin, H, W] -> [N, Cout, Ho, Wo].

    Backward: A [N, S, Cout, Ho, Wo] is reshaped to [N*S, Cout, Ho, Wo] and mapped by
    ``conv_transpose2d`` with the output padding that restores (H, W) exactly.
    """

    module_types = (nn.Conv2d,)

    def __init__(self, module: nn.Conv2d):
        super().__init__(module)
        if module.padding_mode != "zeros":
            raise ValueError(f"Conv2d with padding_mode={module.padding_mode!r} is not supported (only 'zeros')")
        pad = module.padding
        if isinstance(pad, str):
            if pad == "valid":
                pad = (0, 0)
            else:  # 'same' (stride 1): symmetric only
                tot = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
                if any(t % 2 for t in tot):
                    raise ValueError("Conv2d padding='same' with an even receptive field is not supported")
                pad = tuple(t // 2 for t in tot)
        self.padding = tuple(pad)
        self.patchable = module.groups == 1 and tuple(module.dilation) == (1, 1)

    def _conv(self, x, weight, bias):
        m = self.module
        return F.conv2d(x, weight, bias, m.stride, self.padding, m.dilation, m.groups)

    def out_shape(self, in_shape):
        m = self.module
        if len(in_shape) != 3 or in_shape[0] != m.in_channels:
            raise ValueError(f"Conv2d expects [{m.in_channels}, H, W] inputs, got {in_shape}")
        hw = []
        for i in range(2):
            n = in_shape[1 + i] + 2 * self.padding[i] - m.dilation[i] * (m.kernel_size[i] - 1) - 1
            hw.append(n // m.stride[i] + 1)
        return (m.out_channels, hw[0], hw[1])

    def ibp(self, c, r):
        w = self.module.weight
        return self._conv(c, w, self.module.bias), self._conv(r, w.abs(), None)

    def backward_one(self, A, in_shape):
        m = self.module
        return conv_adjoint(A, m.weight, m.bias, m.stride, self.padding, m.dilation, m.groups, in_shape[1:])

    def patch_window(self, win):
        return win.through_conv(self.module.kernel_size, self.module.stride, self.padding)

    def backward_patch_one(self, A, win, in_shape):
        """Each window by the convolution adjoint without padding (``conv_adjoint``, as the dense
        rule); entries that land on the zero padding of the input are masked out (constants, not
        neurons). The bias sums over the whole window: A is zero outside the grid."""
        m = self.module
        new = self.patch_window(win)
        lead = tuple(A.shape[:3])
        # [N|1, P, S, kh, kw, C] -> the channels-last view [N*P, S, C, kh, kw] (no copy)
        A5 = A.reshape((lead[0] * lead[1],) + tuple(A.shape[2:])).permute(0, 1, 4, 2, 3)
        out, bias = conv_adjoint(A5, m.weight, m.bias, m.stride, (0, 0), m.dilation, m.groups, new.size)
        out = out.permute(0, 1, 3, 4, 2).reshape(lead + tuple(new.size) + (out.shape[2],))
        out = out * new.valid(in_shape[1:], A.dtype, A.device)
        return out, (bias.view(lead) if torch.is_tensor(bias) else bias)


class BoundChannelAffine(BoundLayer):
    """Per-channel affine y = x * scale[c] + shift[c]: ``Normalize`` and eval-mode ``BatchNorm2d``.

    Shapes: [N, C, *spatial] -> same. scale and shift are [C] (differentiable in the module's
    parameters/buffers).
    """

    module_types = (Normalize, nn.BatchNorm2d)
    box_exact = True
    mixing = False
    patchable = True

    def __init__(self, module):
        super().__init__(module)
        if isinstance(module, nn.BatchNorm2d):
            if module.training:
                raise ValueError("BatchNorm2d must be in eval mode (call model.eval()) to be bounded")
            if module.running_mean is None or module.running_var is None:
                raise ValueError("BatchNorm2d without running statistics (track_running_stats=False) is not supported")

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        m = self.module
        if isinstance(m, Normalize):
            std = m.std.flatten()
            return 1.0 / std, -m.mean.flatten() / std
        inv = torch.rsqrt(m.running_var + m.eps)
        scale = inv if m.weight is None else m.weight * inv
        shift = -m.running_mean * scale
        if m.bias is not None:
            shift = shift + m.bias
        return scale, shift

    def out_shape(self, in_shape):
        scale, _ = self.scale_shift()
        if len(in_shape) < 1 or in_shape[0] != scale.numel():
            raise ValueError(f"{self.name} expects {scale.numel()} channels, got input shape {in_shape}")
        return tuple(in_shape)

    @staticmethod
    def _bc(v: Tensor, ndim: int) -> Tensor:
        """[C] -> broadcastable against [..., C, *spatial] with ``ndim`` trailing dims after C."""
        return v.view((-1,) + (1,) * ndim)

    def ibp(self, c, r):
        scale, shift = self.scale_shift()
        k = c.dim() - 2
        s = self._bc(scale, k)
        return c * s + self._bc(shift, k), r * s.abs()

    def backward_one(self, A, in_shape):
        scale, shift = self.scale_shift()
        k = A.dim() - 3
        A_new = A * self._bc(scale, k)
        red = tuple(range(3, A.dim()))
        bias = torch.matmul(A.sum(dim=red) if red else A, shift)
        return A_new, bias

    def backward_patch_one(self, A, win, in_shape):
        scale, shift = self.scale_shift()
        return A * scale, torch.matmul(A.sum(dim=(-3, -2)), shift)


class BoundAvgPool2d(BoundLayer):
    """Average pooling (a depthwise convolution with weights 1/divisor).

    Supported: ceil_mode=False and (padding 0 or count_include_pad=True).
    """

    module_types = (nn.AvgPool2d,)

    def __init__(self, module: nn.AvgPool2d):
        super().__init__(module)
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        self.k = pair(module.kernel_size)
        self.s = pair(module.stride if module.stride is not None else module.kernel_size)
        self.p = pair(module.padding)
        if module.ceil_mode:
            raise ValueError("AvgPool2d with ceil_mode=True is not supported")
        if any(self.p) and not module.count_include_pad:
            raise ValueError("AvgPool2d with padding and count_include_pad=False is not supported")
        self.divisor = module.divisor_override or self.k[0] * self.k[1]

    def out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"AvgPool2d expects [C, H, W] inputs, got {in_shape}")
        hw = [(in_shape[1 + i] + 2 * self.p[i] - self.k[i]) // self.s[i] + 1 for i in range(2)]
        return (in_shape[0], hw[0], hw[1])

    def ibp(self, c, r):
        return self.module(c), self.module(r)

    def backward_one(self, A, in_shape):
        C = in_shape[0]
        w = torch.full((C, 1) + self.k, 1.0 / self.divisor, dtype=A.dtype, device=A.device)
        return conv_adjoint(A, w, None, self.s, self.p, (1, 1), C, in_shape[1:])


class BoundFlatten(BoundLayer):
    """nn.Flatten (any start_dim >= 1): a reshape."""

    module_types = (nn.Flatten,)
    box_exact = True
    mixing = False

    def __init__(self, module: nn.Flatten):
        super().__init__(module)
        if module.start_dim == 0:
            raise ValueError("Flatten over the batch dimension (start_dim=0) is not supported")

    def out_shape(self, in_shape):
        start, end = self.module.start_dim, self.module.end_dim
        dims = (None,) + tuple(in_shape)
        start = start if start >= 0 else len(dims) + start
        end = end if end >= 0 else len(dims) + end
        return tuple(in_shape[: start - 1]) + (math.prod(dims[start : end + 1]),) + tuple(in_shape[end:])

    def ibp(self, c, r):
        return self.module(c), self.module(r)

    def backward_one(self, A, in_shape):
        return A.reshape(tuple(A.shape[:2]) + tuple(in_shape)), 0.0


class BoundIdentity(BoundLayer):
    """nn.Identity."""

    module_types = (nn.Identity,)
    box_exact = True
    mixing = False
    patchable = True

    def out_shape(self, in_shape):
        return tuple(in_shape)

    def ibp(self, c, r):
        return c, r

    def backward_one(self, A, in_shape):
        return A, 0.0

    def backward_patch_one(self, A, win, in_shape):
        return A, 0.0


# ----------------------------------------------------------------------------------------
# ReLU


class BoundReLU(BoundLayer):
    """ReLU with the CROWN relaxation.

    For unstable neurons (l < 0 < u): upper line through (l, 0) and (u, u); lower line
    alpha * z with alpha in [0, 1] (adaptive: 1 if u >= -l else 0, as CROWN, or given
    alphas for alpha-CROWN). Stable neurons are exact (slope 0 or 1).
    """

    module_types = (nn.ReLU,)
    affine = False
    box_exact = True
    mixing = False
    patchable = True

    def out_shape(self, in_shape):
        return tuple(in_shape)

    def ibp(self, c, r):
        return _ReLUIBP.apply(c, r)

    @staticmethod
    def relaxation(l: Tensor, u: Tensor, alpha: Optional[Tensor] = None) -> ReLURelaxation:
        """Relaxation for pre-activation bounds l, u [N, *shape]; alpha [N, 1|S, *shape] or None."""
        unstable = (l < 0) & (u > 0)
        active = (l >= 0).to(l.dtype)
        denom = torch.where(unstable, u - l, torch.ones_like(u))
        up_slope = torch.where(unstable, u / denom, active)
        up_bias = torch.where(unstable, -l * up_slope, torch.zeros_like(l))
        if alpha is None:
            lo_slope = torch.where(unstable, (u >= -l).to(l.dtype), active).unsqueeze(1)
        else:
            lo_slope = torch.where(unstable.unsqueeze(1), alpha, active.unsqueeze(1))
        return ReLURelaxation(lo_slope, up_slope.unsqueeze(1), up_bias.unsqueeze(1))

    @staticmethod
    def adaptive_alpha(l: Tensor, u: Tensor) -> Tensor:
        """CROWN's adaptive lower slopes [N, *shape] (the alpha-CROWN initialisation)."""
        return (u >= -l).to(l.dtype)

    def backward(self, A_l, A_u, in_shape, relax: ReLURelaxation = None):
        if relax is None:
            raise ValueError("ReLU backward needs its relaxation (pre-activation bounds)")
        A_l2 = A_u2 = None
        b_l = b_u = 0.0
        if A_l is not None:
            A_l2, b_l = relu_lower_backward(A_l, relax)
        if A_u is not None:
            # upper bound of A.relu(z) = -(lower bound of (-A).relu(z))
            neg_A, nb = relu_lower_backward(-A_u, relax)
            A_u2, b_u = -neg_A, -nb
        return A_l2, A_u2, b_l, b_u

    def backward_patch(self, A_l, A_u, win, in_shape, relax: ReLURelaxation = None):
        """Window form of ``backward``: the relaxation's windows, the same sign split.
        (Intermediate bounds only: a lower slope per sample, not per spec.)"""
        if relax is None or relax.lower_slope.shape[1] != 1:
            raise ValueError("ReLU window backward needs its relaxation with one lower slope per sample")
        d_l, d_u, b_u = (win.gather(t.squeeze(1)).unsqueeze(2) for t in
                         (relax.lower_slope, relax.upper_slope, relax.upper_bias))
        diff = d_u - d_l
        A_l2 = A_u2 = None
        b_l = b_u2 = 0.0
        if A_l is not None:  # A' = A d_l + A- (d_u - d_l), bias = A- . b_u
            neg = A_l.clamp(max=0)
            A_l2, b_l = (A_l * d_l).addcmul_(neg, diff), window_dot(neg, b_u)
        if A_u is not None:  # A' = A d_l + A+ (d_u - d_l), bias = A+ . b_u
            pos = A_u.clamp(min=0)
            A_u2, b_u2 = (A_u * d_l).addcmul_(pos, diff), window_dot(pos, b_u)
        return A_l2, A_u2, b_l, b_u2, win


# ----------------------------------------------------------------------------------------
# registry

LAYER_RULES: dict[type, type[BoundLayer]] = {}
for _cls in (BoundLinear, BoundConv2d, BoundChannelAffine, BoundAvgPool2d, BoundFlatten, BoundIdentity, BoundReLU):
    for _t in _cls.module_types:
        LAYER_RULES[_t] = _cls


def rule_for(module: nn.Module) -> BoundLayer:
    """The rule object of one (leaf) module; TypeError naming the layer when unsupported."""
    cls = LAYER_RULES.get(type(module))
    if cls is None:
        for t, c in LAYER_RULES.items():
            if isinstance(module, t):
                cls = c
                break
    if cls is None:
        supported = ", ".join(sorted({t.__name__ for t in LAYER_RULES}))
        raise TypeError(f"bound engine: unsupported layer type {type(module).__name__} ({module!r}); supported: {supported}")
    return cls(module)
