"""Local-window ("patches") CROWN for intermediate bounds that start at a convolutional layer.

A one-hot specification at neuron (s, i, j) of a convolutional layer's output, propagated
backward, is non-zero only inside the receptive field of position (i, j) at every earlier layer
(a C x kh x kw window). The dense path carries it as a full [N, S, C, H, W] tensor; here it is
carried as its windows (as auto_LiRPA's "patches" mode), which is several times smaller for the
early, wide layers of a strided convnet. Same relaxations, same bounds as the dense path (up to
the order of floating-point sums).

Layout of a window-form spec tensor: A [N|1, P, S, kh, kw, C] for P start positions (a chunk
of the start layer's Ho*Wo positions), S = the start layer's channels, channels last (so that a
permuted view is the channels-last [N*P*S, C, kh, kw] batch the convolution kernels take without
copies); ``Window`` holds the geometry. Entries of a window outside its layer's grid (the zero
padding of a convolution) are kept at zero: they are constants, not neurons or box variables.

The layer rules (``layers``) own their window steps (``patch_window``, ``backward_patch``);
this module holds the geometry, the driver (``patch_bounds``, ``patch_intermediate``) and the
concretization. Hand-written as the rest of the engine (auto_LiRPA, whose patches mode this
follows, does not import on torch 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# windows are used when their total size per spec is below this share of the dense maps' total
# (tests raise it to force the window path on nets too small for it to pay)
WINDOW_SHARE = 1.0


@dataclass(frozen=True)
class Window:
    """Windows of the start positions at one layer's level.

    Start position (i, j) of the ``out_hw`` grid has the window of rows
    i * stride[0] - offset[0] + [0, size[0]) and columns j * stride[1] - offset[1] + [0, size[1]);
    ``pos`` (a LongTensor of flat indices i * out_hw[1] + j) selects the positions in use.
    """

    out_hw: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    size: tuple[int, int]
    pos: Tensor

    @staticmethod
    def start(out_hw, pos: Tensor) -> "Window":
        """1x1 windows: the start layer's own positions."""
        return Window(tuple(out_hw), (1, 1), (0, 0), (1, 1), pos)

    def through_conv(self, kernel, stride, padding) -> "Window":
        """The windows at the input of a convolution (kernel, stride, padding) whose output has ``self``."""
        return Window(
            self.out_hw,
            tuple(s * t for s, t in zip(self.stride, stride)),
            tuple(o * t + p for o, t, p in zip(self.offset, stride, padding)),
            tuple((z - 1) * t + k for z, t, k in zip(self.size, stride, kernel)),
            self.pos,
        )

    def gather(self, t: Tensor) -> Tensor:
        """The windows of a map t [N, C, H, W] (zeros outside the grid) -> [N, P, kh, kw, C]."""
        N, C, H, W = t.shape
        (sy, sx), (oy, ox), (kh, kw) = self.stride, self.offset, self.size
        Ho, Wo = self.out_hw
        pad_b = max(0, (Ho - 1) * sy - oy + kh - H)
        pad_r = max(0, (Wo - 1) * sx - ox + kw - W)
        tp = F.pad(t, (ox, pad_r, oy, pad_b))
        win = tp.unfold(2, kh, sy).unfold(3, kw, sx)[:, :, :Ho, :Wo]  # [N, C, Ho, Wo, kh, kw]
        win = win.permute(0, 2, 3, 4, 5, 1).reshape(N, Ho * Wo, kh, kw, C)
        return win.index_select(1, self.pos)

    def valid(self, hw, dtype, device) -> Tensor:
        """1 inside the grid ``hw``, 0 on padding: [1, P, 1, kh, kw, 1]."""
        ones = torch.ones((1, 1) + tuple(hw), dtype=dtype, device=device)
        return self.gather(ones).unsqueeze(2)


def window_dot(A: Tensor, v: Tensor) -> Tensor:
    """sum over (kh, kw, C) of A * v: A [N|1, P, S, kh, kw, C], v [N, P, 1, kh, kw, C] -> [N, P, S]."""
    N, P = v.shape[:2]
    S = A.shape[2]
    if A.shape[0] == 1 and N > 1:  # one A for all samples: a batch of products over positions
        out = torch.bmm(A.reshape(P, S, -1), v.reshape(N, P, -1).permute(1, 2, 0))  # [P, S, N]
        return out.permute(2, 0, 1)
    return torch.matmul(A.reshape(N, P, S, -1), v.reshape(N, P, -1, 1)).squeeze(-1)


def concretize_patch(A: Tensor, c: Tensor, r: Tensor, win: Window, upper: bool = False) -> Tensor:
    """min (or max) of A . x over the box (c, r) [N, C, H, W] for window-form A -> [N, P, S]."""
    cw, rw = win.gather(c).unsqueeze(2), win.gather(r).unsqueeze(2)
    rad = window_dot(A.abs(), rw)
    return window_dot(A, cw) + rad if upper else window_dot(A, cw) - rad


def patch_plan(layers, lo: int, k: int, shapes) -> Optional[list[Window]]:
    """Whether specs at the output of layer k-1 take the window path through layers[lo:k].

    Every layer there must have a window rule (``patchable``) and 3-D shapes; the windows'
    total size per spec must be below WINDOW_SHARE times the dense maps' total (else the dense
    path is cheaper).
    Returns the windows at the input of layers k-1, ..., lo (geometry only) or None.
    """
    if k - 1 < lo or any(len(shapes[i]) != 3 for i in range(lo, k + 1)):
        return None
    if not all(layers[i].patchable for i in range(lo, k)):
        return None
    win = Window.start(shapes[k][1:], torch.zeros(0, dtype=torch.long))
    wins, patch, dense = [], 0, 0
    for i in range(k - 1, lo - 1, -1):
        win = layers[i].patch_window(win)
        wins.append(win)
        patch += shapes[i][0] * math.prod(win.size)
        dense += math.prod(shapes[i])
    return wins if patch < WINDOW_SHARE * dense else None


def patch_bounds(
    layers,
    lo: int,
    k: int,
    shapes,
    relax_for: Callable[[int], object],
    box: tuple[Tensor, Tensor],
    pos: Tensor,
) -> tuple[Tensor, Tensor]:
    """CROWN lower and upper bounds of every channel at positions ``pos`` of layer k-1's output.

    Backward through layers[k-1], ..., layers[lo] in window form (``patch_plan`` must accept
    them); ``relax_for(i)`` gives the relaxation of ReLU i; ``box`` = (c, r) [N, C, H, W] at the
    input of layer ``lo``. Returns (lb, ub) [N, P, S] with P = len(pos), S = shapes[k][0].
    """
    S = shapes[k][0]
    c, r = box
    eye = torch.eye(S, dtype=c.dtype, device=c.device).view(1, 1, S, 1, 1, S)
    A_l = A_u = eye
    b_l: Tensor | float = 0.0
    b_u: Tensor | float = 0.0
    win = Window.start(shapes[k][1:], pos)
    for i in range(k - 1, lo - 1, -1):
        layer = layers[i]
        relax = relax_for(i) if not layer.affine else None
        A_l, A_u, bl, bu, win = layer.backward_patch(A_l, A_u, win, shapes[i], relax)
        b_l, b_u = b_l + bl, b_u + bu
    N = c.shape[0]
    lb = concretize_patch(A_l, c, r, win) + b_l
    ub = concretize_patch(A_u, c, r, win, upper=True) + b_u
    return lb.expand(N, -1, -1), ub.expand(N, -1, -1)


def patch_intermediate(layers, lo: int, k: int, shapes, relax_for, box, unstable: Tensor, lf: Tensor, uf: Tensor,
                       chunk_elements: int) -> tuple[Tensor, Tensor]:
    """Intermediate CROWN bounds at the input of ReLU k by window-form passes (``patch_bounds``).

    Every channel of each position holding an ``unstable`` neuron ([M] mask over the flat
    shapes[k]) is bounded, in chunks of positions of about ``chunk_elements`` per spec tensor;
    unstable neurons get the intersection with (lf, uf) [N, M], the others keep (lf, uf).
    """
    N, M = lf.shape
    S, Ho, Wo = shapes[k]
    wins = patch_plan(layers, lo, k, shapes)
    widest = max(shapes[i][0] * math.prod(w.size) for i, w in zip(range(k - 1, lo - 1, -1), wins))
    m = max(1, chunk_elements // max(1, N * S * widest))
    pos_all = unstable.view(S, Ho * Wo).any(0).nonzero().flatten()
    lb_full = torch.full((N, Ho * Wo, S), -math.inf, dtype=lf.dtype, device=lf.device)
    ub_full = torch.full((N, Ho * Wo, S), math.inf, dtype=lf.dtype, device=lf.device)
    for s in range(0, pos_all.numel(), m):
        pos = pos_all[s : s + m]
        lb, ub = patch_bounds(layers, lo, k, shapes, relax_for, box, pos)
        lb_full = lb_full.index_copy(1, pos, lb)
        ub_full = ub_full.index_copy(1, pos, ub)
    lb_full = lb_full.transpose(1, 2).reshape(N, M)
    ub_full = ub_full.transpose(1, 2).reshape(N, M)
    lnew = torch.where(unstable, torch.maximum(lf, lb_full), lf)
    unew = torch.where(unstable, torch.minimum(uf, ub_full), uf)
    return lnew, unew
