"""Evaluation on fresh random acquisitions: clean, attacked and certified error.

The protocol of the paper: every glyph is acquired ``samples_per_char`` times with a seeded
generator (distinct from the training seed); each acquired image x is classified (clean error),
certified over ||dx||_inf <= eps_A (certified error; float64, sound), and optionally attacked.
Certified error >= attack error >= clean error must hold; a sample certified and yet broken by
the attack is a soundness bug and is reported as a broken certificate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from a5ocr import bounds
from a5ocr.acquisition import Acquisition
from a5ocr.losses import attack_box


def acquisitions(
    glyphs: torch.Tensor, acquisition: Acquisition, samples_per_char: int, seed: int, chunk: int = 1024
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x [n, 3, R, R], labels [n]) chunks of ``samples_per_char`` acquisitions of each glyph.

    ``glyphs``: [K, R, R]. The draws depend only on ``seed`` (and the chunking), so a seed
    replays the same evaluation set.
    """
    k = glyphs.shape[0]
    generator = torch.Generator(device=glyphs.device).manual_seed(seed)
    labels_all = torch.arange(k, device=glyphs.device).repeat(samples_per_char)
    per_chunk = max(k, (chunk // k) * k)
    with torch.no_grad():
        for start in range(0, labels_all.numel(), per_chunk):
            labels = labels_all[start : start + per_chunk]
            yield acquisition(glyphs[labels], generator), labels


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
            return float(1.0 - m.float().mean().item()) if m.numel() else float("nan")

        out: dict = {
            "samples": self.samples,
            "eps_a": self.eps_a,
            "clean_error": err(self.correct),
            "certified_error": {m: err(v) for m, v in self.certified.items()},
        }
        if len(self.certified) > 1:
            out["certified_error"]["best"] = err(self.certified_any())
        if self.attacked is not None:
            out["attack_error"] = float(self.attacked.float().mean().item())
            out["broken_certificates"] = int(self.broken_certificates().numel())
        per_char = {}
        for k, c in enumerate(self.chars):
            sel = self.labels == k
            row = {"samples": int(sel.sum()), "clean_error": err(self.correct, sel),
                   "certified_error": err(self.certified_any(), sel)}
            if self.attacked is not None:
                row["attack_error"] = float(self.attacked[sel].float().mean().item())
            per_char[c] = row
        out["per_char"] = per_char
        out.update(self.extra)
        return out


def certify_batch(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: float, method: str) -> torch.Tensor:
    """Sound (float64) certificate of each sample: BoolTensor [n]; False where misclassified."""
    xl, xu = attack_box(x, eps)
    return bounds.certify(model, xl, xu, labels, method=method)


def evaluate(
    model: nn.Module,
    glyphs: torch.Tensor,
    chars: str,
    acquisition: Acquisition,
    *,
    eps_a: float,
    samples_per_char: int = 100,
    seed: int = 10_000,
    methods: tuple[str, ...] = ("ibp",),
    cascade: bool = True,
    attack: Callable[[nn.Module, torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None,
    chunk: int = 1024,
    on_chunk: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Evaluate ``model`` on fresh acquisitions of ``glyphs`` [K, R, R].

    ``methods`` certify in order. With ``cascade`` (default) the first method runs on every
    sample and each later one only on the correct samples that the earlier ones left
    uncertified; its entry is named "ibp+crown-ibp" (certified by any method so far). Each
    method is a sound proof, so the cascade's certified set equals the union of the full runs,
    at the cost of the cheap first method plus the tight ones on a few samples.
    ``attack(model, x, labels, eps) -> BoolTensor [n]`` (True = misclassified at some x + dx);
    ``on_chunk(done, total)`` reports progress.
    """
    model.eval()
    total = glyphs.shape[0] * samples_per_char
    labels_l, correct_l, attacked_l = [], [], []
    names = ["+".join(methods[: i + 1]) if cascade and i else m for i, m in enumerate(methods)]
    cert_l: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    done = 0
    for x, labels in acquisitions(glyphs.detach(), acquisition, samples_per_char, seed, chunk):
        with torch.no_grad():
            correct = model(x).argmax(1) == labels
        labels_l.append(labels.cpu())
        correct_l.append(correct.cpu())
        so_far = torch.zeros_like(correct)
        for i, (m, name) in enumerate(zip(methods, names)):
            if cascade and i:
                todo = torch.nonzero(correct & ~so_far).flatten()
                if todo.numel():
                    so_far[todo] = certify_batch(model, x[todo], labels[todo], eps_a, m)
                cert = so_far.clone()
            else:
                cert = certify_batch(model, x, labels, eps_a, m) & correct
                so_far = so_far | cert
            cert_l[name].append(cert.cpu())
        if attack is not None:
            attacked_l.append((attack(model, x, labels, eps_a) | ~correct).cpu())
        done += labels.numel()
        if on_chunk is not None:
            on_chunk(done, total)
    return EvalResult(
        chars=chars,
        eps_a=eps_a,
        labels=torch.cat(labels_l),
        correct=torch.cat(correct_l),
        certified={m: torch.cat(v) for m, v in cert_l.items()},
        attacked=torch.cat(attacked_l) if attack is not None else None,
    )
