"""Sound certificates of acquired images and the certified radius.

``certify_batch`` proves (float64) that a sample keeps its class over ||dx||_inf <= eps;
``certify_cascade`` runs several methods as a cascade (entries named by ``cascade_names``), over
the image box or, with a ``PrintThreat``'s prover, over the print box and the image box jointly
(``bounds.certify_print``; the samples then carry their glyph and camera parameters, a ``PrintBatch``);
``certified_radius`` is THE certified-radius implementation (float32 IBP bisection, each
radius proven in float64), searched up to ``radius_cap``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from a5ocr import bounds
from a5ocr.acquisition import AcquisitionConfig
from a5ocr.bounds.camera import take_params
from a5ocr.training.losses import attack_box

# prove(index [m] or None (all), method, ibp_first) -> certificates of the samples ``index``
Prover = Callable[[torch.Tensor, str, bool], torch.Tensor]


@dataclass
class PrintBatch:
    """Samples of the print threat: glyphs w [n, R, R] as printed and their acquisitions' params."""

    w: torch.Tensor
    params: dict[str, torch.Tensor]

    def sub(self, index: torch.Tensor | slice) -> "PrintBatch":
        if isinstance(index, slice):
            index = torch.arange(self.w.shape[0], device=self.w.device)[index]
        return PrintBatch(self.w[index.to(self.w.device)], take_params(self.params, index))

    def to(self, device) -> "PrintBatch":
        return PrintBatch(self.w.to(device), {k: v.to(device) for k, v in self.params.items()})

    @staticmethod
    def cat(parts: list["PrintBatch"]) -> "PrintBatch":
        return PrintBatch(torch.cat([p.w for p in parts]), {k: torch.cat([p.params[k] for p in parts]) for k in parts[0].params})


@dataclass(frozen=True)
class PrintThreat:
    """The physical threat: the print w + dw, ||dw||_inf <= eps_print (ink clipped to [0, 1]),
    through the sample's camera (``camera``: the scaled acquisition config), then the image
    attack ||dx||_inf <= eps_a (0: none)."""

    eps_print: float
    eps_a: float
    camera: AcquisitionConfig

    def prover(self, model: nn.Module, batch: PrintBatch, labels: torch.Tensor) -> Prover:
        def prove(index: torch.Tensor | None, method: str, ibp_first: bool) -> torch.Tensor:
            sub, ys = (batch, labels) if index is None else (batch.sub(index), labels[index])
            return bounds.certify_print(model, sub.w, sub.params, self.camera, ys, self.eps_print, self.eps_a, method,
                                        ibp_first=ibp_first)
        return prove

    def record(self) -> dict:
        return {"eps_print": self.eps_print, "threat": (
            "the print w + dw, ||dw||_inf <= eps_print (ink clipped to [0, 1]), through each sample's fixed camera "
            "parameters, then the image x + dx, ||dx||_inf <= eps_a, clipped to [0, 1]; certified jointly through "
            "the camera's affine map (a5ocr.bounds.camera)")}


def certify_batch(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, method: str, *, ibp_first: bool = False,
) -> torch.Tensor:
    """Sound (float64) certificate of each sample: BoolTensor [n]; False where misclassified.

    ``eps``: a float, or a tensor [n] (one radius per sample). ``ibp_first``: each margin
    proven by IBP or, only where IBP fails, by ``method`` (``bounds.certify``).
    """
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=x.device)
    xl, xu = linf_box(x, eps)
    # looked up on the module at call time (tests monkeypatch ``bounds.certify``)
    return bounds.certify(model, xl, xu, labels, method=method, ibp_first=ibp_first)


def linf_box(x: torch.Tensor, eps: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The L-inf ball around x [n, ...] of radius eps (float or [n]) clipped to [0, 1], in
    float64 (no rounding of x +- eps can shrink the box below the ball that is certified)."""
    x = x.double()
    if isinstance(eps, torch.Tensor):
        e = eps.to(device=x.device, dtype=torch.float64).view((-1,) + (1,) * (x.dim() - 1))
        return (x - e).clamp(0.0, 1.0), (x + e).clamp(0.0, 1.0)
    return attack_box(x, float(eps))


def cascade_names(methods: tuple[str, ...], cascade: bool = True) -> list[str]:
    """Entry names of ``methods``: with the cascade, later ones read "ibp+crown-ibp"."""
    return ["+".join(methods[: i + 1]) if cascade and i else m for i, m in enumerate(methods)]


def certify_cascade(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, correct: torch.Tensor, eps: float,
    methods: tuple[str, ...], cascade: bool, prove: Prover | None = None,
) -> list[torch.Tensor]:
    """Certificates [n] of each entry of ``cascade_names(methods, cascade)``; False where not ``correct``.

    ``methods`` certify in order. With ``cascade`` the first method runs on every sample and
    each later one only on the correct samples that the earlier ones left uncertified, and
    there per margin: IBP bounds every margin and the later method runs only on the margins
    IBP leaves unproven (``bounds.certify(ibp_first=True)``); its entry is named
    "ibp+crown-ibp": certified when every margin is proven by IBP or by a method so far. Each
    bound is sound, so the cascade certifies every sample that any full run certifies (and
    those whose margins the methods prove only between them), at the cost of the cheap first
    method plus the tight ones on a few margins of a few samples. Without ``cascade``, every
    method runs on every sample and each entry is that method alone. ``prove`` (e.g.
    ``PrintThreat.prover``) replaces the image box of radius eps around x.
    """
    if prove is None:
        def prove(index, method, ibp_first):
            xs, ys = (x, labels) if index is None else (x[index], labels[index])
            return certify_batch(model, xs, ys, eps, method, ibp_first=ibp_first)
    out = []
    so_far = torch.zeros_like(correct)
    for i, m in enumerate(methods):
        if cascade and i:
            todo = torch.nonzero(correct & ~so_far).flatten()
            if todo.numel():
                so_far[todo] = prove(todo, m, True)
            cert = so_far.clone()
        else:
            cert = prove(None, m, False) & correct
            so_far = so_far | cert
        out.append(cert)
    return out


def _ibp_ok32(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Float32 IBP certificate at per-sample radii (a fast guide, not a proof)."""
    xl, xu = linf_box(x, eps)
    with torch.no_grad():
        lb = bounds.margin_lower_bounds(model, xl.to(x.dtype), xu.to(x.dtype), labels, "ibp")
    return ((lb > 0).scatter(1, labels.view(-1, 1), True)).all(1)


def _bisect(check: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], lo: torch.Tensor, hi: torch.Tensor, steps: int) -> torch.Tensor:
    """Largest certified radius in [lo, hi) per sample: lo is taken as certified, hi as not.

    ``check(idx, eps [m]) -> BoolTensor [m]``. Returns lo after ``steps`` halvings (every
    value it takes other than the starting lo passed ``check``).
    """
    lo, hi = lo.clone(), hi.clone()
    idx_all = torch.arange(lo.numel(), device=lo.device)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        ok = check(idx_all, mid)
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    return lo


def radius_cap(eps_a: float) -> float:
    """Upper end of the radius search: max(0.5, 2 eps_a), at most 1."""
    return min(1.0, max(0.5, 2.0 * eps_a))


def certified_radius(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, certified: torch.Tensor, correct: torch.Tensor,
    eps_a: float, steps: int = 10, cap: float | None = None,
) -> torch.Tensor:
    """Certified L-inf radius of each sample [n] (float64 tensor), every value a proof.

    Samples certified at ``eps_a`` (by any sound method) search [eps_a, cap] (cap default
    ``radius_cap(eps_a)``); the others, correct ones, [0, eps_a); misclassified ones get 0.
    The search is an IBP bisection in float32 (``steps`` halvings); the radius found is then
    checked with the sound float64 ``bounds.certify`` (IBP), and samples that fail that check
    are bisected again with the float64 check. The starting lower end (eps_a for a sample the
    cascade certified, 0 for a correct one) needs no check. So radius >= eps_a exactly where
    ``certified`` is True.
    """
    cap = radius_cap(eps_a) if cap is None else cap
    n = x.shape[0]
    r = torch.zeros(n, dtype=torch.float64, device=x.device)
    work = torch.nonzero(correct).flatten()
    if work.numel() == 0:
        return r
    xs, ys = x[work], labels[work]
    cert = certified[work]
    lo = torch.where(cert, torch.full_like(cert, eps_a, dtype=torch.float64), torch.zeros_like(cert, dtype=torch.float64))
    hi = torch.where(cert, torch.full_like(cert, cap, dtype=torch.float64), torch.full_like(cert, eps_a, dtype=torch.float64))
    floor = lo.clone()

    def f32(idx, e):
        return _ibp_ok32(model, xs[idx], ys[idx], e.float())

    def f64(idx, e):
        return certify_batch(model, xs[idx], ys[idx], e, "ibp")

    # certified at the cap already?
    at_cap = torch.zeros_like(cert)
    if cert.any():
        ci = torch.nonzero(cert).flatten()
        at_cap[ci] = certify_batch(model, xs[ci], ys[ci], hi[ci], "ibp")
    rest = torch.nonzero(~at_cap).flatten()
    found = hi.clone()
    if rest.numel():
        found[rest] = _bisect(lambda i, e: f32(rest[i], e), lo[rest], hi[rest], steps)
        # the float64 proof of each radius found above its (already proven) floor
        need = rest[found[rest] > floor[rest]]
        if need.numel():
            ok = f64(need, found[need])
            bad = need[~ok]
            if bad.numel():
                found[bad] = _bisect(lambda i, e: f64(bad[i], e), floor[bad], found[bad], steps)
    r[work] = found
    return r
