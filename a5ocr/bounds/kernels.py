"""Hand-written autograd kernels of the bound engine (``torch.autograd.Function`` subclasses).

Each kernel computes one bound operation with few large temporaries (fresh allocations are
costly on CPU) and writes its own backward pass; the layer rules (``layers``) and the bound
algorithms (``engine``) call them through the plain functions ``conv_adjoint``,
``relu_lower_backward``, ``concretize`` and the ``apply`` of ``_ReLUIBP`` / ``_MarginLinearIBP``.

* tensor layout helpers (broadcast reduction, channels-last views);
* ``_ConvAdjoint``: the transpose of a convolution applied to a batch of specs (and its
  sub-pixel form ``_phase_conv_transpose``);
* ``_ReLULowerBackward``, ``_ReLUIBP``: backward and interval steps through a ReLU, with the
  relaxation they consume (``ReLURelaxation``);
* ``_Concretize``: min / max of A . x over a box; ``_MarginLinearIBP``: IBP of the margins
  through the last Linear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------
# tensor layout helpers


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
# convolution adjoint


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
            if buf.shape == A.shape and grad_du is not buf:  # (with S = 1 grad_du may be buf itself)
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


# ----------------------------------------------------------------------------------------
# concretization over a box and the margin IBP of the last Linear


class _Concretize(torch.autograd.Function):
    """min_x A . x (sign=-1) or max_x (sign=+1) over the box (c, r) = A . c + sign * |A| . r.

    Shapes: A3 [N|1, S, M] (contiguous), c3, r3 [N, M, 1] -> [N, S]. Saves only A (one
    full-size temporary per direction).
    """

    @staticmethod
    def forward(ctx, A3, c3, r3, sign):
        centre = torch.matmul(A3, c3).squeeze(-1)
        radius = torch.matmul(A3.abs(), r3).squeeze(-1)
        ctx.save_for_backward(A3, c3, r3)
        ctx.sign = sign
        return centre + sign * radius

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        A3, c3, r3 = ctx.saved_tensors
        sign = ctx.sign
        need_A, need_c, need_r = ctx.needs_input_grad[:3]
        grad_A = grad_c = grad_r = None
        g1 = g.unsqueeze(1)  # [N, 1, S]
        if need_c:
            grad_c = _sum_to(torch.matmul(g1, A3).transpose(1, 2), c3.shape)
        t = None
        if need_r:
            t = A3.abs()
            grad_r = _sum_to(sign * torch.matmul(g1, t).transpose(1, 2), r3.shape)
        if need_A:
            gs = g.unsqueeze(-1)  # [N, S, 1]
            if t is not None and t.shape == torch.broadcast_shapes(t.shape, gs.shape):
                t = torch.sign(A3, out=t)
            else:
                t = torch.sign(A3).expand(torch.broadcast_shapes(A3.shape, gs.shape)).clone()
            t.mul_(gs).mul_(sign * r3.transpose(1, 2))
            t.addcmul_(gs, c3.transpose(1, 2))
            grad_A = _sum_to(t, A3.shape)
        return grad_A, grad_c, grad_r, None


def concretize(A: Tensor, c: Tensor, r: Tensor, upper: bool = False) -> Tensor:
    """min (or max) of A . x over the box with centre c and radius r.

    Shapes: A [N|1, S, *shape]; c, r [N, *shape] -> [N, S]. (A . c -/+ |A| . r)
    """
    perm = _hwc_perm(A)
    N = c.shape[0]
    if perm is not None:  # channels-last storage: flatten in (H, W, C) order without copying A
        A3 = A.permute(perm).reshape(A.shape[0], A.shape[1], -1)
        cperm = (0, 2, 3, 1)
        c3 = c.permute(cperm).reshape(N, -1, 1)
        r3 = r.permute(cperm).reshape(N, -1, 1)
    else:
        A3 = A.reshape(A.shape[0], A.shape[1], -1)
        c3 = c.reshape(N, -1, 1)
        r3 = r.reshape(N, -1, 1)
    return _Concretize.apply(A3.contiguous(), c3.contiguous(), r3.contiguous(), 1.0 if upper else -1.0)


class _MarginLinearIBP(torch.autograd.Function):
    """IBP of the margins y_label - y_j (j in others) with the spec folded into the last Linear.

    y = W z + b over the box z in [c - r, c + r]: lb[n, s] = (W_l - W_j) . c + b_l - b_j - |W_l - W_j| . r
    with l = labels[n], j = others[n, s]. Shapes: W [K, D], b [K] or None, c, r [N, D],
    labels [N], others [N, S] -> [N, S]. Gathers instead of a dense spec product and keeps
    large temporaries to two (one per direction).
    """

    @staticmethod
    def forward(ctx, W, b, c, r, labels, others):
        yc = F.linear(c, W, b)
        centre = yc.gather(1, labels.unsqueeze(1)) - yc.gather(1, others)
        Wd = _margin_rows(W, labels, others).abs_()
        radius = torch.bmm(Wd, r.unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(W, c, r, labels, others, Wd)
        ctx.has_bias = b is not None
        return centre - radius

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        W, c, r, labels, others, absWd = ctx.saved_tensors
        need_W, need_b, need_c, need_r = ctx.needs_input_grad[:4]
        # centre part through the logits: d/dy = +sum_s g at the label, -g at each j
        gy = torch.zeros(g.shape[0], W.shape[0], dtype=g.dtype, device=g.device)
        gy.scatter_add_(1, others, -g)
        gy.scatter_add_(1, labels.unsqueeze(1), g.sum(1, keepdim=True))
        grad_W = gy.t() @ c if need_W else None
        grad_b = gy.sum(0) if (need_b and ctx.has_bias) else None
        grad_c = gy @ W if need_c else None
        grad_r = -torch.bmm(g.unsqueeze(1), absWd).squeeze(1) if need_r else None
        if need_W:  # radius part: d/dWd = -g r sign(Wd), Wd = W_l - W_j
            t = _margin_rows(W, labels, others).sign_()
            t.mul_(g.unsqueeze(-1)).mul_(r.unsqueeze(1))
            grad_W.index_add_(0, labels, t.sum(1), alpha=-1.0)
            grad_W.index_add_(0, others.flatten(), t.view(-1, W.shape[1]))
        return grad_W, grad_b, grad_c, grad_r, None, None


def _margin_rows(W: Tensor, labels: Tensor, others: Tensor) -> Tensor:
    """W[labels] - W[others]: W [K, D], labels [N], others [N, S] -> a fresh [N, S, D] (no autograd)."""
    t = W.index_select(0, others.flatten()).view(others.shape + W.shape[1:])
    return torch.sub(W.index_select(0, labels).unsqueeze(1), t, out=t)
