"""Why the standard attack leaves samples of an undefended classifier unbroken at eps 0.1 (issue 13):
a measurement of counts, not of time.

    PYTHONPATH=. python benchmarks/unbroken.py RUN [--classifier FILE] [--samples 310] [--eps 0.1]
        [--cap 0.5] [--steps 6] [--threads 2] [--out benchmarks/unbroken.json]

The record goes into ``--out`` under the run folder's name (other runs' records are kept).

RUN: a design run folder holding a vanilla classifier (Table 9's first row: ``recipe none``,
``classifier_recipe vanilla``), evaluated on the run's *original* glyphs. The samples are the
first ``--samples`` acquisitions of the protocol of ``a5ocr reproduce --table 9`` (the run's eval
seed, 100 acquisitions per character in chunks of 1024, so the same images as that evaluation).

1. The standard attack (``attack(strength="standard")``: APGD-CE, APGD-T, FAB-T, Square, PGD-CE)
   at ``--eps`` on every sample, with the protocol's attack seed and batches of 250.
2. For every correct sample it leaves unbroken:
   * ``min_break_eps``: the smallest eps at which the standard attack breaks it, by bisection
     in [eps, cap] (``--steps`` halvings; ``bracket`` = [largest eps tried where it held,
     smallest where it broke]; null when it holds at the cap);
   * ``fab_distance``: the L-inf distance of FAB-T's minimum-norm point (budget 1);
   * ``margin``: the clean logit margin z_y - max_{i != y} z_i, and its percentile among the
     correct samples (``margin_median``: medians over the correct, broken and unbroken ones);
   * ``radius_ibp``: the certified radius of ``certified_radius`` (IBP bisection, proven in
     float64); ``radius_crown_ibp``, ``radius_crown``: the same bisection with the sound float64
     ``certify_batch`` and CROWN-IBP / CROWN bounds.
   A sample with a certified radius >= eps is robust (a proof); one with every radius < eps is
   undecided by the certificates: an attack miss, or robust beyond what the bounds prove.
   ``min_break_eps`` just above eps says the sample is broken a little further out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from a5ocr.evaluation import certified_radius, certify_batch
from a5ocr.evaluation.attacks import attack, fab_targeted
from a5ocr.evaluation.certify import certify_cascade
from a5ocr.export.vnnlib import evaluation_samples
from a5ocr.runs import load_run

ATTACK_SEED = 104_729  # the protocol's attack generator: eval seed + this (protocol._attack_picked)
BATCH = 250


def protocol_samples(run, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n acquisitions of the original glyphs in Table 9's evaluation (100 per character)."""
    return evaluation_samples(run, n, samples_per_char=100, seed=run.eval_seed, original=True)


def standard_attack(model, x, y, eps, seed: int):
    """The standard attack in the protocol's batches; success [n] and the summed per-stage counts."""
    gen = torch.Generator().manual_seed(seed + ATTACK_SEED)
    success = torch.zeros(y.numel(), dtype=torch.bool)
    per_attack: dict[str, int] = {}
    for s in range(0, y.numel(), BATCH):
        e = eps[s : s + BATCH] if torch.is_tensor(eps) else eps
        res = attack(model, x[s : s + BATCH], y[s : s + BATCH], e, strength="standard", generator=gen)
        success[s : s + BATCH] = res.success
        for k, v in res.per_attack.items():
            per_attack[k] = per_attack.get(k, 0) + v
    return success, per_attack


def min_break_eps(model, x, y, eps: float, cap: float, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bisection per sample: (lo [n], hi [n]) with the attack holding at lo and breaking at hi
    (hi = inf where it holds at the cap)."""
    lo = torch.full((y.numel(),), eps, dtype=torch.float64)
    hi = torch.full((y.numel(),), cap, dtype=torch.float64)
    at_cap, _ = standard_attack(model, x, y, hi.float(), seed)
    lo[~at_cap] = cap
    hi[~at_cap] = float("inf")
    todo = at_cap.clone()
    for _ in range(steps):
        idx = todo.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        mid = 0.5 * (lo[idx] + hi[idx])
        ok, _ = standard_attack(model, x[idx], y[idx], mid.float(), seed)
        hi[idx[ok]] = mid[ok]
        lo[idx[~ok]] = mid[~ok]
    return lo, hi


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Clean logit margin z_y - max_{i != y} z_i of each sample [n] (> 0 iff correct)."""
    return logits.gather(1, y[:, None]).squeeze(1) - logits.scatter(1, y[:, None], float("-inf")).amax(1)


def margin_context(logits: torch.Tensor, y: torch.Tensor, unbroken: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Medians of the clean margin over the correct, the broken correct and the unbroken samples,
    and each unbroken sample's percentile among the correct ones."""
    m = margins(logits, y)
    ok = m > 0
    broken = ok.clone()
    broken[unbroken] = False
    pct = torch.tensor([float((m[ok] < m[i]).float().mean()) for i in unbroken.tolist()])
    med = {"correct": float(m[ok].median()), "broken": float(m[broken].median()) if broken.any() else None,
           "unbroken": float(m[unbroken].median()) if unbroken.numel() else None}
    return med, pct


def bound_radius(model, x, y, method: str, top: float, steps: int = 10) -> torch.Tensor:
    """Largest eps in [0, top] proven by ``certify_batch(method)`` (float64, sound), by bisection."""
    lo = torch.zeros(y.numel(), dtype=torch.float64)
    hi = torch.full_like(lo, top)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        ok = certify_batch(model, x, y, mid, method).cpu()
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    return lo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--samples", type=int, default=310)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--cap", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/unbroken.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = load_run(args.run, args.classifier)
    model = run.model.eval()
    x, y = protocol_samples(run, args.samples)
    with torch.no_grad():
        logits = model(x)
    correct = logits.argmax(1) == y
    cert = certify_cascade(model, x, y, correct, args.eps, ("ibp", "crown-ibp"), True)[-1]
    success, per_attack = standard_attack(model, x, y, args.eps, run.eval_seed)
    print(f"{y.numel()} samples, clean errors {int((~correct).sum())}, certified {int(cert.sum())}, "
          f"broken at eps {args.eps}: {int(success.sum())} ({100 * success.float().mean():.2f}%), stages {per_attack}")

    u = (correct & ~success).nonzero().squeeze(1)
    xu, yu = x[u], y[u]
    margin = margins(logits[u], yu)
    margin_medians, margin_pct = margin_context(logits, y, u)
    r_ibp = certified_radius(model, xu, yu, cert[u], correct[u], args.eps, 10)
    r_ci = bound_radius(model, xu, yu, "crown-ibp", args.cap)
    r_c = bound_radius(model, xu, yu, "crown", args.cap)
    xf = fab_targeted(model, xu, yu, 1.0)
    with torch.no_grad():
        fab_ok = model(xf).argmax(1) != yu
    d_fab = torch.where(fab_ok, (xf - xu).abs().flatten(1).amax(1), torch.full_like(margin, float("inf")))
    lo, hi = min_break_eps(model, xu, yu, args.eps, args.cap, args.steps, run.eval_seed)

    rows = []
    for i in range(u.numel()):
        best_r = max(float(r_ibp[i]), float(r_ci[i]), float(r_c[i]))
        rows.append({
            "index": int(u[i]), "char": run.chars[int(yu[i])], "margin": round(float(margin[i]), 4),
            "margin_percentile": round(float(margin_pct[i]), 3),
            "radius_ibp": float(r_ibp[i]), "radius_crown_ibp": float(r_ci[i]), "radius_crown": float(r_c[i]),
            "fab_distance": None if not torch.isfinite(d_fab[i]) else round(float(d_fab[i]), 5),
            "min_break_eps": None if not torch.isfinite(hi[i]) else round(float(hi[i]), 5),
            "bracket": [round(float(lo[i]), 5), None if not torch.isfinite(hi[i]) else round(float(hi[i]), 5)],
            "verdict": "robust (certified)" if best_r >= args.eps else "undecided (radius < eps, attack holds)",
        })
    rows.sort(key=lambda r: (r["min_break_eps"] is None, r["min_break_eps"] or 0))
    print(f"{'idx':>5} {'char':>4} {'margin':>7} {'r_ibp':>8} {'r_crown-ibp':>11} {'r_crown':>8} {'fab_dist':>8} {'min_break':>9}")
    for r in rows:
        print(f"{r['index']:>5} {r['char']:>4} {r['margin']:>7.3f} {r['radius_ibp']:>8.5f} {r['radius_crown_ibp']:>11.5f} "
              f"{r['radius_crown']:>8.5f} {str(r['fab_distance']):>8} {str(r['min_break_eps']):>9}")
    rec = {
        "run": str(run.path), "classifier": str(run.classifier_path), "glyphs": "original", "chars": run.chars,
        "resolution": run.resolution, "eps": args.eps, "cap": args.cap, "bisection_steps": args.steps,
        "samples": int(y.numel()), "eval_seed": run.eval_seed, "attack_seed": run.eval_seed + ATTACK_SEED,
        "clean_errors": int((~correct).sum()), "certified_at_eps": int(cert.sum()),
        "broken_at_eps": int(success.sum()), "attack_error": float(success.float().mean()), "per_attack": per_attack,
        "unbroken_correct": int(u.numel()), "margin_median": margin_medians,
        "robust_certified": sum(r["verdict"].startswith("robust") for r in rows),
        "undecided": sum(r["verdict"].startswith("undecided") for r in rows),
        "unbroken_at_cap": sum(r["min_break_eps"] is None for r in rows),
        "rows": rows,
    }
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.is_file() else {}
    # one record per run folder, named with its parent (reproduce's rows are all called "vanilla")
    key = f"{run.path.parent.name}-{run.path.name}"
    runs = {**old.get("runs", {}), key: rec}
    out.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    print(f"written {out} ({key})")


if __name__ == "__main__":
    main()
