"""What an evaluation yields: per-sample outcomes (``EvalResult``), the full protocol's record
(``Evaluation`` with ``report()`` and ``violations()``), the PSNR of glyphs, and the record of
broken certificates (``broken_record``, saved by ``save_broken``)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from a5ocr import bounds
from a5ocr.evaluation.certify import linf_box
from a5ocr.runio import atomic_path


@dataclass
class EvalResult:
    """Per-sample outcomes of an evaluation; all tensors [N] on the CPU."""

    chars: str
    eps_a: float
    labels: torch.Tensor
    correct: torch.Tensor
    certified: dict[str, torch.Tensor]
    attacked: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return int(self.labels.numel())

    def certified_any(self) -> torch.Tensor:
        """A sample is certified when any method proves it (each is a sound proof)."""
        out = torch.zeros_like(self.correct)
        for v in self.certified.values():
            out |= v
        return out

    def broken_certificates(self) -> torch.Tensor:
        """Indices of samples both certified and attacked successfully (must be empty)."""
        if self.attacked is None:
            return torch.zeros(0, dtype=torch.long)
        return torch.nonzero(self.certified_any() & self.attacked).flatten()

    def summary(self) -> dict:
        """Fractions overall and per character (JSON-ready)."""
        def err(mask_ok: torch.Tensor, sel: torch.Tensor | None = None) -> float:
            m = mask_ok if sel is None else mask_ok[sel]
            return float(1.0 - m.double().mean().item()) if m.numel() else float("nan")

        out: dict = {
            "samples": self.samples,
            "eps_a": self.eps_a,
            "clean_error": err(self.correct),
            "certified_error": {m: err(v) for m, v in self.certified.items()},
        }
        if len(self.certified) > 1:
            out["certified_error"]["best"] = err(self.certified_any())
        if self.attacked is not None:
            out["attack_error"] = float(self.attacked.double().mean().item())
            out["broken_certificates"] = int(self.broken_certificates().numel())
        per_char = {}
        for k, c in enumerate(self.chars):
            sel = self.labels == k
            row = {"samples": int(sel.sum()), "clean_error": err(self.correct, sel),
                   "certified_error": err(self.certified_any(), sel)}
            if self.attacked is not None:
                row["attack_error"] = float(self.attacked[sel].double().mean().item())
            per_char[c] = row
        out["per_char"] = per_char
        out.update(self.extra)
        return out


def psnr_db(w: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR (dB, peak 1) of each glyph: w, ref [K, R, R] -> [K]; inf where identical."""
    mse = ((w.double() - ref.double()) ** 2).flatten(1).mean(1)
    return torch.where(mse > 0, -10.0 * torch.log10(mse.clamp_min(1e-300)), torch.full_like(mse, math.inf))


@dataclass
class Evaluation:
    """The outcome of ``evaluate_full``: per-sample tensors [N] (CPU) and the protocol."""

    result: EvalResult
    protocol: dict
    radius: torch.Tensor | None  # [N] float64
    attacked_mask: torch.Tensor | None  # [N] bool: the attack ran on these samples
    attack_success: torch.Tensor | None  # [N] bool: broken by the attack (among attacked_mask)
    per_attack: dict
    psnr: torch.Tensor  # [K] dB
    broken: dict[str, torch.Tensor]  # tensors of the broken certificates (empty when none)
    seconds: dict

    def violations(self) -> list[str]:
        """Consistency failures (empty when sound): clean <= attack <= certified error per
        method, no sample both certified and broken, radius consistent with the certificate."""
        r = self.result
        out = []
        s = r.summary()
        clean = s["clean_error"]
        for name, v in r.certified.items():
            if r.attacked is not None:
                b = int((v & r.attacked).sum())
                if b:
                    out.append(f"{b} sample(s) certified by {name} at eps {r.eps_a:g} were broken by the attack")
            cert_err = s["certified_error"][name]
            if cert_err < clean - 1e-12:
                out.append(f"certified error ({name}) {cert_err:.4%} < clean error {clean:.4%}")
            if r.attacked is not None and cert_err < s["attack_error"] - 1e-12:
                out.append(f"certified error ({name}) {cert_err:.4%} < attack error {s['attack_error']:.4%}")
        if r.attacked is not None and s["attack_error"] < clean - 1e-12:
            out.append(f"attack error {s['attack_error']:.4%} < clean error {clean:.4%}")
        if self.radius is not None:
            cert = r.certified_any()
            if bool(((self.radius >= r.eps_a) != cert).any()):
                out.append("certified radius disagrees with the certificate at eps_a")
        return out

    def report(self, weakest: int = 10) -> dict:
        """Every figure, JSON-ready (inf PSNR as null = identical glyphs)."""
        s = self.result.summary()
        out: dict = {
            **self.protocol,
            "samples": s["samples"],
            "eps_a": s["eps_a"],
            "clean_error": s["clean_error"],
            "attack_error": s.get("attack_error"),
            "certified_error": s["certified_error"],
            "broken_certificates": s.get("broken_certificates", 0),
        }
        if self.attacked_mask is not None:
            out["attacked"] = self._attacked_section()
        if self.radius is not None:
            out["radius"] = self._radius_section()
        out["psnr_db"] = self._psnr_section()
        per_char = self._per_char(s)
        out["per_char"] = per_char
        out["weakest"] = self._weakest_first(per_char)[:weakest]
        viol = self.violations()
        out["consistency"] = {"ok": not viol, "violations": viol}
        out["seconds"] = self.seconds
        return out

    def _attacked_section(self) -> dict:
        """What the attack ran on and what it broke."""
        r, am = self.result, self.attacked_mask
        cert_any = r.certified_any()
        return {
            **self.protocol["attacked"],
            "samples": int(am.sum()),
            "uncertified": int((am & ~cert_any).sum()),
            "certified_checked": int((am & cert_any).sum()),
            "certified_not_attacked": int((~am & cert_any).sum()),
            "misclassified": int((~r.correct).sum()),
            "broken_by_attack": int(self.attack_success.sum()),
            "broken_certified_checked": int((self.attack_success & cert_any).sum()),
            "per_attack": self.per_attack,
        }

    def _radius_section(self) -> dict:
        """Mean, median and quantiles of the certified radius."""
        rad = self.radius
        q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
        qs = torch.quantile(rad, q).tolist()
        return {
            **self.protocol["radius"],
            "mean": float(rad.mean()),
            "median": qs[2],
            "quantiles": {f"p{int(round(p * 100))}": v for p, v in zip(q.tolist(), qs)},
            "at_cap": int((rad >= self.protocol["radius"]["cap"]).sum()),
        }

    def _psnr_section(self) -> dict:
        """PSNR of the glyphs against their reference: mean and min per class, and overall."""
        ps = self.psnr
        mse_all = float(torch.mean(10 ** (-ps / 10)).item()) if torch.isfinite(ps).any() else 0.0
        return {
            "reference": self.protocol.get("psnr_reference", "original glyphs") + " (peak 1); null = identical (infinite PSNR)",
            "mean": _finite(float(ps.mean())),
            "min": _finite(float(ps.min())),
            "overall": _finite(-10 * math.log10(mse_all) if mse_all > 0 else math.inf),
        }

    def _per_char(self, s: dict) -> dict:
        """The rows of ``summary()["per_char"]`` with the per-method, radius, attack and PSNR figures."""
        r = self.result
        per_char = {}
        for k, c in enumerate(r.chars):
            sel = r.labels == k
            row = dict(s["per_char"][c])
            row["certified_error_by_method"] = {n: float(1 - v[sel].double().mean()) for n, v in r.certified.items()}
            if self.radius is not None:
                row["radius_median"] = float(self.radius[sel].median()) if sel.any() else None
                row["radius_min"] = float(self.radius[sel].min()) if sel.any() else None
            if self.attacked_mask is not None:
                row["attacked"] = int(self.attacked_mask[sel].sum())
            row["psnr_db"] = _finite(float(self.psnr[k]))
            per_char[c] = row
        return per_char

    def _weakest_first(self, per_char: dict) -> list:
        """The classes by highest certified error, then lowest median radius, highest attack
        error, highest clean error, then their order."""
        chars = self.result.chars
        return sorted(
            chars,
            key=lambda c: (-per_char[c]["certified_error"], per_char[c].get("radius_median") or 0.0,
                           -(per_char[c].get("attack_error") or 0.0), -per_char[c]["clean_error"], chars.index(c)),
        )


def _finite(v: float) -> float | None:
    """v, or None (JSON null) where it is not finite."""
    return v if math.isfinite(v) else None


def broken_record(
    model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
    eps_a: float, methods: tuple[str, ...], device: torch.device,
) -> dict[str, torch.Tensor]:
    """Tensors describing broken certificates (for ``broken_certificates.safetensors``)."""
    xd, xad, yd = x.to(device), x_adv.to(device), labels.to(device)
    rec = {"x": x.contiguous(), "x_adv": x_adv.contiguous(), "labels": labels.contiguous(), "index": index.contiguous()}
    with torch.no_grad():
        logits = model(xad).cpu()
        logits64 = copy.deepcopy(model).double()(xad.double()).cpu()
    y = labels.view(-1, 1)
    rec["margins_adv"] = (logits.gather(1, y) - logits).contiguous()
    rec["margins_adv_float64"] = (logits64.gather(1, y) - logits64).contiguous()
    xl, xu = linf_box(xd, eps_a)
    for m in methods:
        try:
            lb = bounds.margin_lower_bounds(model, xl, xu, yd, m, sound=True).cpu()
        except Exception:  # pragma: no cover - the record is best effort
            continue
        rec[f"margins_lower_{m}"] = lb.contiguous()
    return rec


def print_broken_record(
    model: nn.Module, batch, w_adv: torch.Tensor, dx: torch.Tensor, x: torch.Tensor, x_adv: torch.Tensor,
    labels: torch.Tensor, index: torch.Tensor, threat, methods: tuple[str, ...],
) -> dict[str, torch.Tensor]:
    """``broken_record`` of the print threat: also the glyphs (w, w_adv), the image change dx, the
    camera parameters and the joint margin lower bounds (``bounds.camera_margin_lower_bounds``)."""
    rec = {"x": x.contiguous(), "x_adv": x_adv.contiguous(), "labels": labels.contiguous(), "index": index.contiguous(),
           "w": batch.w.contiguous(), "w_adv": w_adv.contiguous(), "dx": dx.contiguous()}
    rec.update({f"param_{k}": v.contiguous() for k, v in batch.params.items()})
    with torch.no_grad():
        logits = model(x_adv)
        logits64 = copy.deepcopy(model).double()(x_adv.double())
    y = labels.view(-1, 1)
    rec["margins_adv"] = (logits.gather(1, y) - logits).contiguous()
    rec["margins_adv_float64"] = (logits64.gather(1, y) - logits64).contiguous()
    for m in methods:
        lb = bounds.camera_margin_lower_bounds(model, batch.w, batch.params, threat.camera, labels, threat.eps_print,
                                               threat.eps_a, m, sound=True)
        rec[f"margins_lower_{m}"] = lb.contiguous()
    return rec


def save_broken(path: Path, ev: Evaluation, meta: dict) -> None:
    """Write the broken certificates of ``ev`` to a safetensors file (atomically)."""
    with atomic_path(path) as tmp:
        save_file(ev.broken, str(tmp), metadata={k: str(v) for k, v in meta.items()})
