"""Evaluation on fresh random acquisitions: clean, attacked and certified error.

The protocol of the paper: every glyph is acquired ``samples_per_char`` times with a seeded
generator (distinct from the training seed); each acquired image x is classified (clean error),
certified over ||dx||_inf <= eps_A (certified error; float64, sound), and optionally attacked.
Certified error >= attack error >= clean error must hold; a sample certified and yet broken by
the attack is a soundness bug and is reported as a broken certificate.

Two entry points:

* ``evaluate`` -- the light evaluation a design run does at its end (certificates, and an
  optional attack callback on every sample);
* ``evaluate_full`` -- what ``a5ocr evaluate`` and ``a5ocr reproduce`` run: the certificate
  cascade, the certified radius of every sample (IBP bisection, each radius proven in float64),
  the attack on every uncertified sample plus a seeded check subset of the certified ones, the
  consistency checks, PSNR of the glyphs; ``Evaluation.report()`` is the JSON-ready record.
  ``load_run`` reads a design run folder for it.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from a5ocr import bounds
from a5ocr.acquisition import Acquisition, AcquisitionConfig
from a5ocr.training.losses import attack_box
from a5ocr.runs import Run
from a5ocr.errors import EvaluateError



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


def certify_batch(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, method: str) -> torch.Tensor:
    """Sound (float64) certificate of each sample: BoolTensor [n]; False where misclassified.

    ``eps``: a float, or a tensor [n] (one radius per sample).
    """
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=x.device)
    xl, xu = _box(x, eps)
    # looked up on the module at call time (tests monkeypatch ``bounds.certify``)
    return bounds.certify(model, xl, xu, labels, method=method)


def _box(x: torch.Tensor, eps: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def _certify_methods(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, correct: torch.Tensor, eps: float,
    methods: tuple[str, ...], cascade: bool,
) -> list[torch.Tensor]:
    """Certificates [n] of each entry of ``cascade_names(methods, cascade)`` (see ``evaluate``)."""
    out = []
    so_far = torch.zeros_like(correct)
    for i, m in enumerate(methods):
        if cascade and i:
            todo = torch.nonzero(correct & ~so_far).flatten()
            if todo.numel():
                so_far[todo] = certify_batch(model, x[todo], labels[todo], eps, m)
            cert = so_far.clone()
        else:
            cert = certify_batch(model, x, labels, eps, m) & correct
            so_far = so_far | cert
        out.append(cert)
    return out


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
    names = cascade_names(methods, cascade)
    cert_l: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    done = 0
    for x, labels in acquisitions(glyphs.detach(), acquisition, samples_per_char, seed, chunk):
        with torch.no_grad():
            correct = model(x).argmax(1) == labels
        labels_l.append(labels.cpu())
        correct_l.append(correct.cpu())
        for name, cert in zip(names, _certify_methods(model, x, labels, correct, eps_a, methods, cascade)):
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


# =========================================================================== full evaluation
ATTACKS = ("standard", "fast", "none")


def check_options(
    *, eps_a: float | None = None, methods: tuple[str, ...] = ("ibp",), attack: str = "standard",
    check_fraction: float = 0.1, samples_per_char: int = 1, radius_steps: int = 0, check_attack: str = "fast",
) -> tuple[str, ...]:
    """Validate evaluation options (``EvaluateError`` with a readable line); returns the methods
    with IBP first (it is always run and reported alone)."""
    if eps_a is not None and not 0.0 < eps_a < 1.0:
        raise EvaluateError(f"--eps-a must be in (0, 1), got {eps_a}")
    bad = [m for m in methods if m not in bounds.METHODS]
    if bad:
        raise EvaluateError(f"unknown certification method {bad[0]!r} (one of: {', '.join(bounds.METHODS)})")
    if attack not in ATTACKS:
        raise EvaluateError(f"--attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
    if not 0.0 <= check_fraction <= 1.0:
        raise EvaluateError(f"--check-fraction must be in [0, 1], got {check_fraction}")
    if check_attack not in ("standard", "fast"):
        raise EvaluateError(f"--check-attack must be standard or fast (--check-fraction 0 skips the check), got {check_attack!r}")
    if samples_per_char < 1:
        raise EvaluateError("--samples-per-char must be at least 1")
    if radius_steps < 0:
        raise EvaluateError("--radius-steps must be >= 0")
    return tuple(dict.fromkeys(("ibp",) + tuple(methods)))


def psnr_db(w: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR (dB, peak 1) of each glyph: w, ref [K, R, R] -> [K]; inf where identical."""
    mse = ((w.double() - ref.double()) ** 2).flatten(1).mean(1)
    return torch.where(mse > 0, -10.0 * torch.log10(mse.clamp_min(1e-300)), torch.full_like(mse, math.inf))


def _ibp_ok32(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Float32 IBP certificate at per-sample radii (a fast guide, not a proof)."""
    xl, xu = _box(x, eps)
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
        r = self.result
        s = r.summary()
        cert_any = r.certified_any()
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
            am = self.attacked_mask
            out["attacked"] = {
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
        if self.radius is not None:
            rad = self.radius
            q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
            qs = torch.quantile(rad, q).tolist()
            out["radius"] = {
                **self.protocol["radius"],
                "mean": float(rad.mean()),
                "median": qs[2],
                "quantiles": {f"p{int(round(p * 100))}": v for p, v in zip(q.tolist(), qs)},
                "at_cap": int((rad >= self.protocol["radius"]["cap"]).sum()),
            }
        ps = self.psnr
        mse_all = float(torch.mean(10 ** (-ps / 10)).item()) if torch.isfinite(ps).any() else 0.0
        out["psnr_db"] = {
            "reference": self.protocol.get("psnr_reference", "original glyphs") + " (peak 1); null = identical (infinite PSNR)",
            "mean": _finite(float(ps.mean())),
            "min": _finite(float(ps.min())),
            "overall": _finite(-10 * math.log10(mse_all) if mse_all > 0 else math.inf),
        }
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
        out["per_char"] = per_char
        order = sorted(
            r.chars,
            key=lambda c: (-per_char[c]["certified_error"], per_char[c].get("radius_median") or 0.0,
                           -(per_char[c].get("attack_error") or 0.0), -per_char[c]["clean_error"], r.chars.index(c)),
        )
        out["weakest"] = order[:weakest]
        viol = self.violations()
        out["consistency"] = {"ok": not viol, "violations": viol}
        out["seconds"] = self.seconds
        return out


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def evaluate_full(
    model: nn.Module,
    glyphs: torch.Tensor,
    chars: str,
    acquisition: Acquisition,
    *,
    eps_a: float,
    samples_per_char: int = 100,
    seed: int = 10_000,
    reference: torch.Tensor | None = None,
    chunk: int = 1024,
    transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    **options,
) -> Evaluation:
    """The full protocol of ``a5ocr evaluate`` on ``glyphs`` [K, R, R]: ``evaluate_samples`` on
    ``samples_per_char`` fresh acquisitions of each glyph, the same draws as ``evaluate``
    (seed, chunking), so the default seed and sample count replay a design run's own evaluation.

    ``reference`` [K, R, R]: glyphs to measure PSNR against (default: ``glyphs``, inf).
    ``transform(x, labels) -> x'``: an image-side defence applied to each chunk of acquisitions
    before the classifier (A5/O, A5/R); the certificates and attacks are about x'.
    ``options``: those of ``evaluate_samples``.
    """
    check_options(samples_per_char=samples_per_char)
    k = glyphs.shape[0]
    chunks = acquisitions(glyphs.detach(), acquisition, samples_per_char, seed, chunk)
    if transform is not None:
        chunks = ((transform(x, labels), labels) for x, labels in chunks)
    ev = evaluate_samples(model, chunks, total=k * samples_per_char, chars=chars, eps_a=eps_a, seed=seed,
                          device=glyphs.device, **options)
    ref = glyphs if reference is None else reference
    ev.psnr = psnr_db(glyphs.detach().cpu(), ref.detach().cpu())
    ev.protocol = {"chars": chars, "samples_per_char": samples_per_char, **ev.protocol}
    return ev


def evaluate_samples(
    model: nn.Module,
    chunks: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    total: int,
    chars: str | list[str],
    eps_a: float,
    seed: int = 10_000,
    device: torch.device | str = "cpu",
    methods: tuple[str, ...] = ("ibp", "crown-ibp"),
    cascade: bool = True,
    attack: str = "standard",
    check_fraction: float = 0.1,
    check_attack: str = "fast",
    attack_all: bool = False,
    radius_steps: int = 10,
    attack_batch: int = 250,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> Evaluation:
    """The full protocol on given inputs: ``chunks`` yields (x [n, 3, R, R], labels [n]),
    ``total`` samples in all; ``chars`` names the classes (a string of characters or a list).

    1. Certificates: ``methods`` (IBP first; it is put first when missing) as a cascade.
    2. Certified radius (``radius_steps`` > 0; see ``certified_radius``).
    3. Attack (``attack`` standard / fast / none, ``a5ocr.evaluation.attacks.attack``): every correct
       sample that no method certified, plus a seeded random ``check_fraction`` of the
       certified ones with ``check_attack`` (the soundness cross-check: a certified sample
       cannot be broken, so any success is a bug; ``fast`` by default because a robust sample
       runs every stage of the cascade); ``attack_all`` attacks every correct sample with
       ``attack``.
       Misclassified samples count as broken without attack. Certified samples left out are
       counted as not broken: their certificate proves it.
    ``on_progress(phase, done, total)``: phases "certify" (with the radius), "attack", "check".
    The PSNR of the result is left infinite (no reference); ``evaluate_full`` sets it.
    """
    from a5ocr.evaluation import attacks

    methods = check_options(eps_a=eps_a, methods=methods, attack=attack, check_fraction=check_fraction,
                            radius_steps=radius_steps, check_attack=check_attack)

    model.eval()
    device = torch.device(device)
    k = len(chars)
    names = cascade_names(methods, cascade)
    t0 = time.monotonic()
    progress = on_progress or (lambda *a: None)
    sub = 256  # certification sub-batches inside a chunk (progress only; results are per sample)

    labels_l, correct_l, radius_l = [], [], []
    cert_l: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    keep_x: list[torch.Tensor] = []  # x of the samples to attack (CPU)
    keep_idx: list[torch.Tensor] = []
    sel_gen = torch.Generator().manual_seed(seed + 7_919)
    t_radius = 0.0
    done = 0
    for x, labels in chunks:
        x, labels = x.detach(), labels
        with torch.no_grad():
            correct = model(x).argmax(1) == labels
        certs = [torch.zeros_like(correct) for _ in names]
        rad = torch.zeros(labels.numel(), dtype=torch.float64)
        for s0 in range(0, labels.numel(), sub):
            sl = slice(s0, s0 + sub)
            cs = _certify_methods(model, x[sl], labels[sl], correct[sl], eps_a, methods, cascade)
            for c, v in zip(certs, cs):
                c[sl] = v
            if radius_steps:
                t1 = time.monotonic()
                any_c = torch.stack(cs).any(0)
                rad[sl] = certified_radius(model, x[sl], labels[sl], any_c, correct[sl], eps_a, radius_steps).cpu()
                t_radius += time.monotonic() - t1
            progress("certify", done + min(s0 + sub, labels.numel()), total)
        any_cert = torch.stack(certs).any(0)
        if attack != "none":
            u = torch.rand(labels.numel(), generator=sel_gen).to(device)
            pick = correct & (~any_cert | attack_all | (u < check_fraction))
            idx = torch.nonzero(pick).flatten()
            keep_x.append(x[idx].cpu())
            keep_idx.append((idx + done).cpu())
        labels_l.append(labels.cpu())
        correct_l.append(correct.cpu())
        radius_l.append(rad)
        for n, c in zip(names, certs):
            cert_l[n].append(c.cpu())
        done += labels.numel()
    t_cert = time.monotonic() - t0 - t_radius
    labels_all = torch.cat(labels_l)
    correct_all = torch.cat(correct_l)
    certified = {n: torch.cat(v) for n, v in cert_l.items()}
    result = EvalResult(chars=chars, eps_a=eps_a, labels=labels_all, correct=correct_all, certified=certified)
    cert_any = result.certified_any()

    attacked_mask = success = None
    per_attack: dict = {}
    broken: dict[str, torch.Tensor] = {}
    t2 = time.monotonic()
    if done != total:
        raise ValueError(f"evaluate_samples: the chunks held {done} samples, not {total}")
    if attack != "none":
        xs = torch.cat(keep_x)
        idx = torch.cat(keep_idx)
        attacked_mask = torch.zeros(total, dtype=torch.bool)
        attacked_mask[idx] = True
        success = torch.zeros(total, dtype=torch.bool)
        x_adv_all = torch.empty_like(xs)
        gen = torch.Generator(device=device).manual_seed(seed + 104_729)
        # group 1: the uncertified samples (all, with --attack-all) under the main attack;
        # group 2: the certified check subset under the check attack
        is_check = cert_any[idx] & (not attack_all)
        groups = [("attack", attack, torch.nonzero(~is_check).flatten()),
                  ("check", check_attack, torch.nonzero(is_check).flatten())]
        for phase, strength, pos in groups:
            n_att = pos.numel()
            if n_att == 0:
                continue
            per_attack[phase] = {"strength": strength, "samples": n_att}
            progress(phase, 0, n_att)
            for s0 in range(0, n_att, attack_batch):
                p = pos[s0 : s0 + attack_batch]
                xb, yb = xs[p].to(device), labels_all[idx[p]].to(device)
                res = attacks.attack(model, xb, yb, eps_a, strength=strength, generator=gen)
                success[idx[p]] = res.success.cpu()
                x_adv_all[p] = res.x_adv.cpu()
                for name, v in res.per_attack.items():
                    per_attack[phase][name] = per_attack[phase].get(name, 0) + v
                progress(phase, min(s0 + attack_batch, n_att), n_att)
        result.attacked = success | ~correct_all
        hit = torch.nonzero(success[idx] & cert_any[idx]).flatten()
        if hit.numel():
            broken = _broken_record(model, xs[hit], x_adv_all[hit], labels_all[idx[hit]], idx[hit], eps_a, methods, device)
    t_attack = time.monotonic() - t2

    protocol = {
        "seed": seed,
        "methods": list(methods),
        "cascade": cascade,
        "attacked": {
            "attack": attack,
            "policy": "none" if attack == "none" else ("all correct samples" if attack_all else
                      "every correct uncertified sample with `attack` + a seeded random check_fraction of the "
                      "certified ones with `check_attack` (soundness cross-check); certified samples not attacked "
                      "count as not broken (their certificate proves it); misclassified ones count as broken"),
            "check_fraction": 1.0 if attack_all else check_fraction,
            "check_attack": attack if attack_all else check_attack,
        },
        "radius": {
            "method": "IBP bisection in float32, each radius proven by float64 IBP (or, at eps_a, by the cascade certificate); misclassified = 0",
            "steps": radius_steps,
            "cap": radius_cap(eps_a),
        } if radius_steps else None,
    }
    if not radius_steps:
        protocol.pop("radius")
    return Evaluation(
        result=result,
        protocol=protocol,
        radius=torch.cat(radius_l) if radius_steps else None,
        attacked_mask=attacked_mask,
        attack_success=success,
        per_attack=per_attack,
        psnr=torch.full((k,), math.inf, dtype=torch.float64),
        broken=broken,
        seconds={"certify": round(t_cert, 2), "radius": round(t_radius, 2), "attack": round(t_attack, 2),
                 "total": round(time.monotonic() - t0, 2)},
    )


def _broken_record(
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
    xl, xu = _box(xd, eps_a)
    for m in methods:
        try:
            lb = bounds.margin_lower_bounds(model, xl, xu, yd, m, sound=True).cpu()
        except Exception:  # pragma: no cover - the record is best effort
            continue
        rec[f"margins_lower_{m}"] = lb.contiguous()
    return rec


def save_broken(path: Path, ev: Evaluation, meta: dict) -> None:
    """Write the broken certificates of ``ev`` to a safetensors file (atomically)."""
    from safetensors.torch import save_file

    from a5ocr.runio import atomic_path

    with atomic_path(path) as tmp:
        save_file(ev.broken, str(tmp), metadata={k: str(v) for k, v in meta.items()})


def evaluate_run(
    run: Run,
    *,
    original: bool = False,
    device: torch.device | str = "cpu",
    eps_a: float | None = None,
    seed: int | None = None,
    **kwargs,
) -> Evaluation:
    """``evaluate_full`` on a loaded run: its robust glyphs (or ``original``), its classifier,
    its acquisition model; eps_a and seed default to the run's eps_a and eval seed."""
    device = torch.device(device)
    eps = run.eps_a if eps_a is None else eps_a
    glyphs = (run.original if original else run.robust).to(device)
    acq = Acquisition(run.resolution, run.acquisition)
    ev = evaluate_full(
        run.model.to(device), glyphs, run.chars, acq, eps_a=eps, seed=run.eval_seed if seed is None else seed,
        reference=run.original.to(device), **kwargs,
    )
    ev.protocol = {
        "run": str(run.path), "glyphs": "original" if original else "robust",
        "classifier": str(run.classifier_path), "resolution": run.resolution, **ev.protocol,
    }
    return ev
