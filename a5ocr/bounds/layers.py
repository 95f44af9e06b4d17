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

Adding a layer type = one class here + one entry in ``LAYER_RULES``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from a5ocr.normalize import Normalize

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------
# helpers


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Reduce a broadcast result ``t`` back to ``shape`` (the inverse of broadcasting)."""
    if t.shape == shape:
        return t
    lead = t.dim() - len(shape)
    if lead:
        t = t.sum(dim=tuple(range(lead)))
    dims = tuple(i for i, s in enumerate(shape) if s == 1 and t.shape[i] != 1)
    if dims:
        t = t.sum(dim=dims, keepdim=True)
    return t


def _neuron_dims(t: Tensor) -> tuple[int, ...]:
    """The neuron dimensions of a [N, S, *shape] tensor."""
    return tuple(range(2, t.dim()))


def _fast_conv_dtype(t: Tensor) -> bool:
    """Whether convolutions of this dtype take the oneDNN/cuDNN fast paths (float64 does not)."""
    return t.dtype in (torch.float32, torch.bfloat16, torch.float16)


def _channels_last(t4: Tensor) -> Tensor:
    """4-D tensor in channels_last memory layout (oneDNN's fast path for the big transposed convs);
    plain contiguous layout for float64 (whose CPU convolutions are the slow reference ones)."""
    if not _fast_conv_dtype(t4):
        return t4.contiguous()
    if t4.dim() == 4 and not t4.is_contiguous(memory_format=torch.channels_last):
        return t4.contiguous(memory_format=torch.channels_last)
    return t4


def _hwc_perm(t: Tensor) -> Optional[tuple[int, ...]]:
    """For a 5-D [N, S, C, H, W] tensor stored channels-last, the permutation that makes it contiguous."""
    if t.dim() == 5:
        perm = (0, 1, 3, 4, 2)
        if t.permute(perm).is_contiguous():
            return perm
    return None


def _inv(perm: tuple[int, ...]) -> tuple[int, ...]:
    out = [0] * len(perm)
    for i, p in enumerate(perm):
        out[p] = i
    return tuple(out)


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


class _ConvAdjoint(torch.autograd.Function):
    """The adjoint (transpose) of conv2d(., W) + b applied to a batch of specs.

    A [N, S, Cout, Ho, Wo] -> (A' [N, S, Cin, H, W], A . b [N, S]) with A' = conv_transpose(A, W)
    and A . b = sum over (c, h, w) of A[..., c, h, w] * b[c]. Runs channels-last (oneDNN's fast
    path). The backward is written as plain convolutions: grad_A = conv2d(G, W) (+ g_bias * b)
    and grad_W = the weight gradient of conv2d(G, W) with grad_output A (autograd's own
    conv_transpose2d weight gradient is pathologically slow on CPU for large spec batches).
    """

    @staticmethod
    def forward(ctx, A, W, b, stride, padding, dilation, groups, in_hw):
        lead = tuple(A.shape[:2])
        out_hw = A.shape[3:]
        opad = tuple(
            in_hw[i] - ((out_hw[i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (W.shape[2 + i] - 1) + 1)
            for i in range(2)
        )
        A4 = _channels_last(A.reshape((lead[0] * lead[1],) + tuple(A.shape[2:])))
        if (
            groups == 1 and dilation == (1, 1) and stride != (1, 1) and W.shape[1] * stride[0] * stride[1] <= 32
            and _fast_conv_dtype(A4) and A4.device.type == "cpu"
        ):
            out = _phase_conv_transpose(A4, W, stride, padding, in_hw)
        else:
            out = F.conv_transpose2d(A4, W, None, stride, padding, opad, groups, dilation)
        ctx.save_for_backward(A4, W, b)
        ctx.conf = (stride, padding, dilation, groups, lead)
        if b is None:
            return out.unflatten(0, lead), None
        bias = torch.matmul(A4.sum(dim=(2, 3)), b).view(lead)
        return out.unflatten(0, lead), bias

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G, g_bias):
        A4, W, b = ctx.saved_tensors
        stride, padding, dilation, groups, lead = ctx.conf
        G4 = _channels_last(G.reshape((lead[0] * lead[1],) + tuple(G.shape[2:])))
        grad_A = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            gA = F.conv2d(G4, W, None, stride, padding, dilation, groups)
            if b is not None and g_bias is not None:
                gA.add_(g_bias.reshape(-1, 1, 1, 1) * b.view(1, -1, 1, 1))
            grad_A = gA.unflatten(0, lead)
        if ctx.needs_input_grad[1]:
            grad_W = torch.ops.aten.convolution_backward(
                A4, G4, W, None, stride, padding, dilation, False, (0, 0), groups, (False, True, False)
            )[1]
        if b is not None and ctx.needs_input_grad[2] and g_bias is not None:
            grad_b = torch.matmul(g_bias.reshape(1, -1), A4.sum(dim=(2, 3))).view_as(b)
        return grad_A, grad_W, grad_b, None, None, None, None, None


def _phase_weight(W: Tensor, stride, padding) -> tuple[Tensor, list[int]]:
    """Sub-pixel (phase) form of conv_transpose2d(., W, stride, padding): a stride-1 cross-correlation
    kernel K [Cin*sh*sw, Cout, Th, Tw] (output channel c*sh*sw + py*sw + px holds output pixels
    (s*q + py, s*q' + px)) and each axis's left padding d_hi (the largest tap offset)."""
    Cout, Cin, kh, kw = W.shape
    taps, d_his = [], []
    for k, s, p in ((kh, stride[0], padding[0]), (kw, stride[1], padding[1])):
        ds = [d for py in range(s) for d in range(-(k + p) // s - 1, (k + p) // s + 2) if 0 <= s * d + py + p < k]
        d_lo, d_hi = min(ds), max(ds)
        T = d_hi - d_lo + 1
        # index[py, t] = kernel tap s * (d_hi - t) + py + p, or k (a zero tap) when out of range
        idx = torch.full((s, T), k, dtype=torch.long)
        for py in range(s):
            for t in range(T):
                ky = s * (d_hi - t) + py + p
                if 0 <= ky < k:
                    idx[py, t] = ky
        taps.append(idx)
        d_his.append(d_hi)
    Wz = F.pad(W, (0, 1, 0, 1))  # [Cout, Cin, kh+1, kw+1], last row/col zero
    iy, ix = taps[0].to(W.device), taps[1].to(W.device)
    sh, Th = iy.shape
    sw, Tw = ix.shape
    K = Wz[:, :, iy.view(sh, 1, Th, 1), ix.view(1, sw, 1, Tw)]  # [Cout, Cin, sh, sw, Th, Tw]
    K = K.permute(1, 2, 3, 0, 4, 5).reshape(Cin * sh * sw, Cout, Th, Tw)
    return K, d_his


def _phase_conv_transpose(A4: Tensor, W: Tensor, stride, padding, in_hw) -> Tensor:
    """conv_transpose2d(A4, W, stride, padding) cropped/padded to ``in_hw``, computed as one stride-1
    convolution with Cin*sh*sw output channels and a pixel shuffle: several times faster on CPU
    when Cin is small (the network's input layer). A4 [n, Cout, Ho, Wo] -> [n, Cin, H, W] (channels-last)."""
    n, Cout, Ho, Wo = A4.shape
    Cin = W.shape[1]
    sh, sw = stride
    K, d_his = _phase_weight(W, stride, padding)
    Th, Tw = K.shape[2:]
    Qh, Qw = -(-in_hw[0] // sh), -(-in_hw[1] // sw)
    pads, starts = [], []
    for Q, Hq, T, d_hi in ((Qh, Ho, Th, d_his[0]), (Qw, Wo, Tw, d_his[1])):
        pad_r = Q - Hq - d_hi + T - 1
        P = max(0, d_hi, pad_r)
        pads.append(P)
        starts.append(P - d_hi)
    out = F.conv2d(A4, K.to(A4.dtype), None, 1, tuple(pads))
    out = out[:, :, starts[0] : starts[0] + Qh, starts[1] : starts[1] + Qw]
    # [n, Cin*sh*sw, Qh, Qw] -> [n, Qh, sh, Qw, sw, Cin] -> [n, Cin, Qh*sh, Qw*sw] (channels-last)
    out = out.permute(0, 2, 3, 1).reshape(n, Qh, Qw, Cin, sh, sw).permute(0, 1, 4, 2, 5, 3)
    out = out.reshape(n, Qh * sh, Qw * sw, Cin)[:, : in_hw[0], : in_hw[1]]
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def conv_adjoint(A: Tensor, W: Tensor, b: Optional[Tensor], stride, padding, dilation, groups, in_hw):
    """A [N|1, S, Cout, Ho, Wo] -> (A' [N|1, S, Cin, H, W], A . b [N|1, S] or 0.0) with
    A . (conv2d(x, W) + b) = A' . x + A . b."""
    out, bias = _ConvAdjoint.apply(A, W, b, tuple(stride), tuple(padding), tuple(dilation), groups, tuple(in_hw))
    return out, (0.0 if bias is None else bias)


class BoundChannelAffine(BoundLayer):
    """Per-channel affine y = x * scale[c] + shift[c]: ``Normalize`` and eval-mode ``BatchNorm2d``.

    Shapes: [N, C, *spatial] -> same. scale and shift are [C] (differentiable in the module's
    parameters/buffers).
    """

    module_types = (Normalize, nn.BatchNorm2d)
    box_exact = True
    mixing = False

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
        out_shape = A.shape[2:]
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

    def out_shape(self, in_shape):
        return tuple(in_shape)

    def ibp(self, c, r):
        return c, r

    def backward_one(self, A, in_shape):
        return A, 0.0


# ----------------------------------------------------------------------------------------
# ReLU


@dataclass
class ReLURelaxation:
    """Linear bounds of relu(z) for z in [l, u]: lower_slope*z <= relu(z) <= upper_slope*z + upper_bias.

    Shapes: upper_slope, upper_bias [N, 1, *shape]; lower_slope [N, 1 or S, *shape].
    """

    lower_slope: Tensor
    upper_slope: Tensor
    upper_bias: Tensor


def _neuron_dot(X: Tensor, v: Tensor) -> Tensor:
    """sum over neurons of X * v: X [N|1, S, *shape] (contiguous), v [N, 1, *shape] -> [N, S]."""
    S = X.shape[1]
    X3 = X.reshape(X.shape[0], S, -1)
    v3 = v.reshape(v.shape[0], -1, 1)
    return torch.matmul(X3, v3).squeeze(-1)


def _spec_sum(X: Tensor, w: Tensor) -> Tensor:
    """sum over specs of w[n, s] * X[n, s, ...]: X [N|1, S, *shape], w [N, S] -> [N, 1, *shape]."""
    S = X.shape[1]
    X3 = X.reshape(X.shape[0], S, -1)
    return torch.matmul(w.unsqueeze(1), X3).view((w.shape[0], 1) + tuple(X.shape[2:]))


class _ReLULowerBackward(torch.autograd.Function):
    """Memory- and allocation-lean backward step of a lower bound through a relaxed ReLU.

    A' = A+ * lower_slope + A- * upper_slope, bias = sum(A- * upper_bias) over neurons.
    Saves only A (plus the small slopes) and recomputes the sign split in the backward pass;
    uses one full-size temporary in each direction (fresh large allocations are costly on CPU).
    Shapes: A [N|1, S, *shape] (contiguous); slopes [N, 1|S, *shape] -> A' [N, S, *shape], bias [N, S].
    """

    @staticmethod
    def forward(ctx, A, d_l, d_u, b_u):
        out_shape = torch.broadcast_shapes(A.shape, d_l.shape, d_u.shape)
        neg = torch.clamp(A, max=0)
        bias = _neuron_dot(neg, b_u)
        # A' = A- * (d_u - d_l) + A * d_l
        out = _mul(neg, d_u - d_l) if neg.shape == out_shape else neg * (d_u - d_l)
        out.addcmul_(A, d_l)
        ctx.save_for_backward(A, d_l, d_u, b_u)
        return out, bias

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G, g_bias):
        # Only float arithmetic on the big tensors (bool masks are slow on CPU); the sign split
        # comes from clamp/sign. At A == 0 the gradient w.r.t. A is the mean of both sides.
        A, d_l, d_u, b_u = ctx.saved_tensors
        need_A, need_dl, need_du, need_bu = ctx.needs_input_grad[:4]
        G = G.contiguous()
        grad_A = grad_dl = grad_du = grad_bu = None
        buf = torch.clamp(A, max=0)  # A-
        if need_bu:
            grad_bu = _sum_to(_spec_sum(buf, g_bias), b_u.shape)
        buf = _mul(buf, G)  # G * A-
        if need_du:
            grad_du = _sum_to(buf, d_u.shape)
        if need_dl:
            grad_dl = _sum_to((G * A).sub_(buf), d_l.shape)  # G * A+
        if need_A:
            # grad_A = G * d_l + [A < 0] * (G * (d_u - d_l) + g_bias * b_u)
            if buf.shape == A.shape:
                neg_ind = torch.sign(A, out=buf).clamp_(max=0)  # -[A < 0]
            else:
                neg_ind = torch.sign(A).clamp_(max=0)
            gb = g_bias.view(g_bias.shape + (1,) * (A.dim() - 2))
            t = G * (d_l - d_u)
            t = _addcmul(t, gb, b_u, -1.0)
            t = _mul(t, neg_ind)
            t = _addcmul(t, G, d_l, 1.0)
            grad_A = _sum_to(t, A.shape)
        return grad_A, grad_dl, grad_du, grad_bu


def _addcmul(a: Tensor, b: Tensor, c: Tensor, value: float) -> Tensor:
    """a + value * b * c, in place in ``a`` (a temporary) when the broadcast shape allows it."""
    if a.shape == torch.broadcast_shapes(a.shape, b.shape, c.shape):
        return a.addcmul_(b, c, value=value)
    return torch.addcmul(a, b, c, value=value)


def _mul(a: Tensor, b: Tensor) -> Tensor:
    """a * b, in place in ``a`` (a temporary) when the broadcast shape allows it."""
    if a.shape == torch.broadcast_shapes(a.shape, b.shape):
        return a.mul_(b)
    return a * b


def relu_lower_backward(A: Tensor, relax: ReLURelaxation) -> tuple[Tensor, Tensor]:
    """Lower-bound backward step through a relaxed ReLU: A [N|1,S,*shape] -> (A' [N,S,*shape], bias [N,S])."""
    d_l, d_u, b_u = relax.lower_slope, relax.upper_slope, relax.upper_bias
    perm = _hwc_perm(A)
    if perm is not None:  # channels-last storage: compute on contiguous permuted views
        ip = _inv(perm)
        A_p = A.permute(perm)
        d_l, d_u, b_u = (t.permute(perm).contiguous() for t in (d_l, d_u, b_u))
        A_new, bias = _ReLULowerBackward.apply(A_p, d_l, d_u, b_u)
        return A_new.permute(ip), bias
    return _ReLULowerBackward.apply(A.contiguous(), d_l.contiguous(), d_u.contiguous(), b_u.contiguous())


class _ReLUIBP(torch.autograd.Function):
    """Interval ReLU in centre/radius form with few large temporaries (fresh allocations are
    costly on CPU): lo = relu(c - r), hi = relu(c + r) -> ((hi + lo) / 2, (hi - lo) / 2).
    Shapes: c, r [N, *shape] -> same."""

    @staticmethod
    def forward(ctx, c, r):
        lo = torch.sub(c, r).relu_()
        hi = torch.add(c, r).relu_()
        r2 = hi.sub_(lo).mul_(0.5)
        c2 = lo.add_(r2)
        ctx.save_for_backward(c2, r2)
        return c2, r2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gc, gr):
        c2, r2 = ctx.saved_tensors
        if gc is None:
            gc = torch.zeros_like(c2)
        if gr is None:
            gr = torch.zeros_like(r2)
        # hi = c2 + r2, lo = c2 - r2 (both >= 0): [hi > 0] = sign(hi), [lo > 0] = sign(lo)
        m = torch.add(c2, r2).sign_()
        d_hi = torch.add(gc, gr).mul_(m).mul_(0.5)
        grad_c = torch.sub(gc, gr)
        d_lo = torch.sub(c2, r2, out=m).sign_().mul_(grad_c).mul_(0.5)
        torch.add(d_hi, d_lo, out=grad_c)
        grad_r = d_hi.sub_(d_lo)
        return grad_c, grad_r


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
