"""Evaluation on fresh random acquisitions: clean, attacked and certified error.

The protocol of the paper: every glyph is acquired ``samples_per_char`` times with a seeded
generator (distinct from the training seed); each acquired image x is classified (clean error),
certified over ||dx||_inf <= eps_A (certified error; float64, sound), and optionally attacked.
Certified error >= attack error >= clean error must hold; a sample certified and yet broken by
the attack is a soundness bug and is reported as a broken certificate.

One evaluation loop, ``evaluate_samples``, and the entry points built on it:

* ``evaluate_full`` -- what ``a5ocr evaluate`` and ``a5ocr reproduce`` run: the certificate
  cascade, the certified radius of every sample (IBP bisection, each radius proven in float64),
  the attack on every uncertified sample plus a seeded check subset of the certified ones, the
  consistency checks, PSNR of the glyphs; ``Evaluation.report()`` is the JSON-ready record.
  ``evaluate_run`` runs it on a design run folder read by ``a5ocr.runs.load_run``.
* ``evaluate`` -- the light evaluation a design run does at its end: the same protocol with the
  attack and the radius off, the methods as given; it returns the ``EvalResult``.

With ``eps_print`` > 0 the threat is physical too (``PrintThreat``): each sample keeps its glyph
and camera parameters, the certificates are over the print box and the image box jointly
(``bounds.certify_print``), the attack is ``attacks.print_attack`` (PGD on the print and the
image through the camera), and there is no certified radius. eps_print = 0 is the path above,
unchanged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from a5ocr import bounds
from a5ocr.acquisition import Acquisition, AcquisitionConfig
from a5ocr.errors import EvaluateError, check_in_unit_interval
from a5ocr.evaluation import attacks
from a5ocr.evaluation.certify import PrintBatch, PrintThreat, cascade_names, certified_radius, certify_cascade, radius_cap
from a5ocr.evaluation.report import EvalResult, Evaluation, broken_record, print_broken_record, psnr_db
from a5ocr.runs import Run

ATTACKS = ("standard", "fast", "none")
SUB_BATCH = 256  # certification sub-batches inside a chunk (progress only; results are per sample)

Progress = Callable[[str, int, int], None]


def acquisitions(
    glyphs: torch.Tensor, acquisition: Acquisition, samples_per_char: int, seed: int, chunk: int = 1024,
    with_params: bool = False,
) -> Iterator[tuple]:
    """Yield (x [n, 3, R, R], labels [n]) chunks of ``samples_per_char`` acquisitions of each glyph
    (``with_params``: (x, labels, PrintBatch of the glyphs and the camera parameters), the same draws).

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
            if not with_params:
                yield acquisition(glyphs[labels], generator), labels
                continue
            x, params = acquisition(glyphs[labels], generator, return_params=True)
            yield x, labels, PrintBatch(glyphs[labels], params)


def check_options(
    *, eps_a: float | None = None, methods: tuple[str, ...] = ("ibp",), attack: str = "standard",
    check_fraction: float = 0.1, samples_per_char: int = 1, radius_steps: int = 0, check_attack: str = "fast",
    eps_print: float = 0.0,
) -> tuple[str, ...]:
    """Validate evaluation options (``EvaluateError`` with a readable line); returns the methods
    with IBP first (it is always run and reported alone). eps_print: 0 (the image attack alone)
    or in (0, 1); with it, eps_a may be 0 (the print attack alone)."""
    if not 0.0 <= eps_print < 1.0:  # NaN fails too
        raise EvaluateError(f"--eps-print must be in [0, 1) (0: the image attack alone), got {eps_print}")
    if eps_a is not None and not (eps_print > 0 and eps_a == 0):
        check_in_unit_interval(eps_a, "--eps-a", EvaluateError)
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
    chunk: int = 1024,
    on_chunk: Callable[[int, int], None] | None = None,
    eps_print: float = 0.0,
) -> EvalResult:
    """Certificates of ``model`` on fresh acquisitions of ``glyphs`` [K, R, R]: ``evaluate_full``
    with the attack and the radius off, each chunk certified whole, ``methods`` in the order
    given (see ``certify_cascade``; IBP is not put first). ``on_chunk(done, total)`` reports
    progress after each chunk. ``eps_print`` > 0: the joint print threat (eps_a may be 0).
    Returns the per-sample ``EvalResult`` (no attack).
    """
    on_progress = None if on_chunk is None else (lambda phase, done, total: on_chunk(done, total))
    ev = evaluate_full(
        model, glyphs, chars, acquisition, eps_a=eps_a, samples_per_char=samples_per_char, seed=seed,
        chunk=chunk, methods=tuple(methods), ibp_first=False, cascade=cascade, attack="none", radius_steps=0,
        sub_batch=None, on_progress=on_progress, eps_print=eps_print,
    )
    return ev.result


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
    printed = options.get("eps_print", 0.0) > 0
    if printed:
        if transform is not None:
            raise ValueError("the print threat is about the glyphs: no image-side transform")
        options.setdefault("camera", acquisition.cfg)
    chunks = acquisitions(glyphs.detach(), acquisition, samples_per_char, seed, chunk, with_params=printed)
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
    ibp_first: bool = True,
    sub_batch: int | None = SUB_BATCH,
    on_progress: Progress | None = None,
    eps_print: float = 0.0, camera: AcquisitionConfig | None = None,
) -> Evaluation:
    """The full protocol on given inputs: ``chunks`` yields (x [n, 3, R, R], labels [n]), ``total``
    samples in all; ``chars`` names the classes (a string of characters or a list). ``eps_print``
    > 0: the print threat through ``camera``, chunks (x, labels, PrintBatch), no radius.

    1. Certificates: ``methods`` (IBP first; it is put first when missing, unless not
       ``ibp_first``) as a cascade (``certify_cascade``), in sub-batches of ``sub_batch``
       samples of each chunk (None: the whole chunk at once).
    2. Certified radius (``radius_steps`` > 0; see ``certified_radius``).
    3. Attack (``attack`` standard / fast / none, ``a5ocr.evaluation.attacks.attack``): every correct
       sample that no method certified, plus a seeded random ``check_fraction`` of the
       certified ones with ``check_attack`` (the soundness cross-check: a certified sample
       cannot be broken, so any success is a bug; ``fast`` by default because a robust sample
       runs every stage of the cascade); ``attack_all`` attacks every correct sample with
       ``attack``.
       Misclassified samples count as broken without attack. Certified samples left out count as
       not broken: their certificate proves it.
    ``on_progress(phase, done, total)``: phases "certify" (with the radius), "attack", "check". The
    PSNR of the result is left infinite (no reference); ``evaluate_full`` sets it.
    """
    checked = check_options(eps_a=eps_a, methods=methods, attack=attack, check_fraction=check_fraction,
                            radius_steps=radius_steps, check_attack=check_attack, eps_print=eps_print)
    methods = checked if ibp_first else tuple(methods)
    threat, radius_steps = (PrintThreat(eps_print, eps_a, camera), 0) if eps_print > 0 else (None, radius_steps)
    model.eval()
    device = torch.device(device)
    t0 = time.monotonic()
    progress = on_progress or (lambda *a: None)
    pick = None if attack == "none" else _attack_picker(seed, check_fraction, attack_all, device)
    seen = _certify_chunks(model, chunks, total, eps_a, methods, cascade, radius_steps, sub_batch, pick, progress, threat)
    t_cert = time.monotonic() - t0 - seen.t_radius
    result = EvalResult(chars=chars, eps_a=eps_a, labels=torch.cat(seen.labels), correct=torch.cat(seen.correct),
                        certified={n: torch.cat(v) for n, v in seen.certified.items()})

    t2 = time.monotonic()
    if seen.done != total:
        raise ValueError(f"evaluate_samples: the chunks held {seen.done} samples, not {total}")
    att = _Attacked()
    if attack != "none":
        att = _attack_picked(model, seen, result, eps_a=eps_a, attack=attack, check_attack=check_attack,
                             attack_all=attack_all, attack_batch=attack_batch, seed=seed, device=device,
                             methods=methods, progress=progress, threat=threat)
        result.attacked = att.success | ~result.correct
    t_attack = time.monotonic() - t2

    return Evaluation(
        result=result,
        protocol=_protocol_record(seed=seed, methods=methods, cascade=cascade, attack=attack, attack_all=attack_all,
                                  check_fraction=check_fraction, check_attack=check_attack,
                                  radius_steps=radius_steps, eps_a=eps_a, threat=threat),
        radius=torch.cat(seen.radius) if radius_steps else None,
        attacked_mask=att.mask,
        attack_success=att.success,
        per_attack=att.per_attack,
        psnr=torch.full((len(chars),), math.inf, dtype=torch.float64),
        broken=att.broken,
        seconds={"certify": round(t_cert, 2), "radius": round(seen.t_radius, 2), "attack": round(t_attack, 2),
                 "total": round(time.monotonic() - t0, 2)},
    )


# ----------------------------------------------------------------- the steps of evaluate_samples
@dataclass
class _Certified:
    """What the certification pass keeps of every chunk: per-chunk tensors on the CPU."""

    certified: dict[str, list[torch.Tensor]]  # cascade entry -> certificates
    labels: list[torch.Tensor] = field(default_factory=list)
    correct: list[torch.Tensor] = field(default_factory=list)
    radius: list[torch.Tensor] = field(default_factory=list)  # float64; zeros without the radius
    keep_x: list[torch.Tensor] = field(default_factory=list)  # x of the samples picked for the attack
    keep_idx: list[torch.Tensor] = field(default_factory=list)  # their indices among all samples
    keep_print: list[PrintBatch] = field(default_factory=list)  # their glyphs and cameras (print threat)
    done: int = 0  # samples seen
    t_radius: float = 0.0  # seconds spent on the radius


@dataclass
class _Attacked:
    """The outcome of the attack step (all None / empty when the attack is off)."""

    mask: torch.Tensor | None = None  # [N] bool: the attack ran on these samples
    success: torch.Tensor | None = None  # [N] bool: broken by the attack
    per_attack: dict = field(default_factory=dict)  # phase -> strength, samples, breaks per stage
    broken: dict[str, torch.Tensor] = field(default_factory=dict)  # see ``broken_record``


def _attack_picker(
    seed: int, check_fraction: float, attack_all: bool, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``pick(correct [n], certified [n]) -> indices [m]`` of a chunk's samples to attack: every
    correct uncertified one (every correct one with ``attack_all``) and a seeded random
    ``check_fraction`` of the certified ones (one draw per sample of every chunk)."""
    sel_gen = torch.Generator().manual_seed(seed + 7_919)

    def pick(correct: torch.Tensor, any_cert: torch.Tensor) -> torch.Tensor:
        u = torch.rand(correct.numel(), generator=sel_gen).to(device)
        return torch.nonzero(correct & (~any_cert | attack_all | (u < check_fraction))).flatten()

    return pick


def _certify_chunks(
    model: nn.Module, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], total: int, eps_a: float,
    methods: tuple[str, ...], cascade: bool, radius_steps: int, sub_batch: int | None,
    pick: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None, progress: Progress,
    threat: PrintThreat | None = None,
) -> _Certified:
    """Step 1-2: classify, certify (and the radius of) every chunk; keep the samples ``pick`` chooses."""
    names = cascade_names(methods, cascade)
    seen = _Certified(certified={n: [] for n in names})
    for x, labels, *batch in chunks:
        x = x.detach()
        with torch.no_grad():
            correct = model(x).argmax(1) == labels
        prover = None if threat is None else (lambda sl: threat.prover(model, batch[0].sub(sl), labels[sl]))
        certs, rad = _certify_chunk(model, x, labels, correct, eps_a, methods, cascade, radius_steps, sub_batch,
                                    seen, lambda done: progress("certify", done, total), prover)
        if pick is not None:
            idx = pick(correct, torch.stack(certs).any(0))
            seen.keep_x.append(x[idx].cpu())
            seen.keep_idx.append((idx + seen.done).cpu())
            if threat is not None:
                seen.keep_print.append(batch[0].sub(idx).to("cpu"))
        seen.labels.append(labels.cpu())
        seen.correct.append(correct.cpu())
        seen.radius.append(rad)
        for n, c in zip(names, certs):
            seen.certified[n].append(c.cpu())
        seen.done += labels.numel()
    return seen


def _certify_chunk(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, correct: torch.Tensor, eps_a: float,
    methods: tuple[str, ...], cascade: bool, radius_steps: int, sub_batch: int | None, seen: _Certified,
    on_done: Callable[[int], None], prover: Callable[[slice], Callable] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Certificates (one [n] per cascade entry) and radius [n] (float64, CPU; zeros without the
    radius) of one chunk, in sub-batches of ``sub_batch`` samples (None: all at once);
    ``on_done(samples done in all)`` after each sub-batch. ``prover(slice)``: the certificates'
    prover of a sub-batch (``PrintThreat.prover``; None: the image box of radius eps_a)."""
    n = labels.numel()
    sub = sub_batch or max(n, 1)
    certs = [torch.zeros_like(correct) for _ in methods]
    rad = torch.zeros(n, dtype=torch.float64)
    for s0 in range(0, n, sub):
        sl = slice(s0, s0 + sub)
        cs = certify_cascade(model, x[sl], labels[sl], correct[sl], eps_a, methods, cascade,
                             None if prover is None else prover(sl))
        for c, v in zip(certs, cs):
            c[sl] = v
        if radius_steps:
            t1 = time.monotonic()
            any_c = torch.stack(cs).any(0)
            rad[sl] = certified_radius(model, x[sl], labels[sl], any_c, correct[sl], eps_a, radius_steps).cpu()
            seen.t_radius += time.monotonic() - t1
        on_done(seen.done + min(s0 + sub, n))
    return certs, rad


def _attack_picked(
    model: nn.Module, seen: _Certified, result: EvalResult, *, eps_a: float, attack: str, check_attack: str,
    attack_all: bool, attack_batch: int, seed: int, device: torch.device, methods: tuple[str, ...], progress: Progress,
    threat: PrintThreat | None = None,
) -> _Attacked:
    """Step 3: attack the kept samples in two groups, record what broke, and the evidence of any
    certified sample that the attack broke. With ``threat``: the print attack (``_attack_print``)."""
    total = result.samples
    xs = torch.cat(seen.keep_x)
    idx = torch.cat(seen.keep_idx)
    cert_any = result.certified_any()
    out = _Attacked(mask=torch.zeros(total, dtype=torch.bool), success=torch.zeros(total, dtype=torch.bool))
    out.mask[idx] = True
    x_adv_all = torch.empty_like(xs)
    printed = None if threat is None else _PrintAttacked(PrintBatch.cat(seen.keep_print), threat, model)
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
        record = out.per_attack[phase] = {"strength": strength, "samples": n_att}
        progress(phase, 0, n_att)
        # the image attack: one call, stage by stage over all of the group (the suite gathers
        # every stage's survivors); the print attack (PGD only): chunk by chunk
        chunks = [pos] if printed is None else [pos[s0 : s0 + attack_batch] for s0 in range(0, n_att, attack_batch)]
        done = 0
        for p in chunks:
            yb = result.labels[idx[p]].to(device)
            if printed is None:
                res = attacks.attack(model, xs[p].to(device), yb, eps_a, strength=strength, generator=gen,
                                     batch_size=attack_batch,
                                     on_progress=lambda d, t, ph=phase: progress(ph, d * n_att // t, n_att))
            else:
                res = printed.attack(p, yb, strength, gen, device)
            out.success[idx[p]] = res.success.cpu()
            x_adv_all[p] = res.x_adv.cpu()
            for name, v in res.per_attack.items():
                record[name] = record.get(name, 0) + v
            done += p.numel()
            progress(phase, done, n_att)
    hit = torch.nonzero(out.success[idx] & cert_any[idx]).flatten()
    if hit.numel() and printed is not None:
        out.broken = printed.broken(hit, xs[hit], x_adv_all[hit], result.labels[idx[hit]], idx[hit], methods)
    elif hit.numel():
        out.broken = broken_record(model, xs[hit], x_adv_all[hit], result.labels[idx[hit]], idx[hit], eps_a,
                                   methods, device)
    return out


@dataclass
class _PrintAttacked:
    """The print attack on the kept samples (``batch``: their glyphs and cameras, CPU), keeping
    the attacked prints and image changes for the record of broken certificates."""

    batch: PrintBatch
    threat: PrintThreat
    model: nn.Module
    w_adv: dict = field(default_factory=dict)  # kept position -> (w_adv, dx)

    def attack(self, pos: torch.Tensor, labels: torch.Tensor, strength: str, gen: torch.Generator, device):
        b, t = self.batch.sub(pos).to(device), self.threat
        res = attacks.print_attack(self.model, b.w, b.params, t.camera, labels, t.eps_print, t.eps_a,
                                   strength=strength, generator=gen)
        for k, p in enumerate(pos.tolist()):
            self.w_adv[p] = (res.w_adv[k].cpu(), res.dx[k].cpu())
        return res

    def broken(self, hit, x, x_adv, labels, index, methods) -> dict[str, torch.Tensor]:
        w_adv = torch.stack([self.w_adv[p][0] for p in hit.tolist()])
        dx = torch.stack([self.w_adv[p][1] for p in hit.tolist()])
        return print_broken_record(self.model, self.batch.sub(hit), w_adv, dx, x, x_adv, labels, index, self.threat,
                                   methods)


def _protocol_record(
    *, seed: int, methods: tuple[str, ...], cascade: bool, attack: str, attack_all: bool, check_fraction: float,
    check_attack: str, radius_steps: int, eps_a: float, threat: PrintThreat | None = None,
) -> dict:
    """The settings of an evaluation, as ``Evaluation.protocol`` (and the report) records them."""
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
    }
    if radius_steps:
        protocol["radius"] = {
            "method": "IBP bisection in float32, each radius proven by float64 IBP (or, at eps_a, by the cascade certificate); misclassified = 0",
            "steps": radius_steps,
            "cap": radius_cap(eps_a),
        }
    return protocol if threat is None else {**protocol, **threat.record()}


# ----------------------------------------------------------------- a design run folder
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
    its acquisition model; eps_a and seed default to the run's eps_a and eval seed (eps_a to 0
    with ``eps_print`` > 0 in ``kwargs``: the print attack alone)."""
    device = torch.device(device)
    eps = (0.0 if kwargs.get("eps_print", 0.0) > 0 else run.eps_a) if eps_a is None else eps_a
    glyphs = (run.original if original else run.robust).to(device)
    acq = run.camera()
    ev = evaluate_full(
        run.model.to(device), glyphs, run.chars, acq, eps_a=eps, seed=run.eval_seed if seed is None else seed,
        reference=run.original.to(device), **kwargs,
    )
    ev.protocol = {
        "run": str(run.path), "glyphs": "original" if original else "robust",
        "classifier": str(run.classifier_path), "resolution": run.resolution,
        **({"print_scale": run.print_scale} if run.print_scale > 1 else {}), **ev.protocol,
    }
    return ev
