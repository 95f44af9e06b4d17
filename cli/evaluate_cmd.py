"""``a5ocr evaluate``: the full evaluation protocol on a design run folder.

Registered in ``cli/app.py``. Bad input raises ``a5ocr.evaluation.EvaluateError`` (one line,
exit 2); a broken certificate (a sample certified and yet broken by the attack) or any other
inconsistency exits with code 3 after saving the evidence.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from a5ocr.cli.progress import THREADS_HELP, progress_bars
from a5ocr.errors import EvaluateError
from a5ocr.runio import write_json

if TYPE_CHECKING:
    from a5ocr.evaluation import Evaluation

EXIT_INCONSISTENT = 3


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{v:.2%}" if pct else f"{v:.4f}"


def what_of(rep: dict) -> str:
    """What was evaluated, in words: "robust glyphs", "original glyphs", or a robustify run's images."""
    what = rep.get("glyphs", "")
    return f"{what} glyphs" if what in ("robust", "original") else what


def print_report(rep: dict, console: Console, weakest: int = 10) -> None:
    """The overall figures and the weakest glyphs as rich tables."""
    cert = rep["certified_error"]
    printed = f"eps_print {rep['eps_print']:g}  " if rep.get("eps_print") else ""
    title = (f"{rep.get('run', '')}  {what_of(rep)}  {printed}eps_A {rep['eps_a']:g}  "
             f"{rep['samples']} acquisitions (seed {rep['seed']})")
    t = Table(title=title)
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("clean error", _fmt(rep["clean_error"]))
    if rep.get("attack_error") is not None:
        a = rep["attacked"]
        t.add_row(f"attack error ({a['attack']}; {a['samples']} attacked)", _fmt(rep["attack_error"]))
    for name, v in cert.items():
        t.add_row(f"certified error ({name})", _fmt(v))
    t.add_row("broken certificates", str(rep.get("broken_certificates", 0)))
    if rep.get("radius"):
        r = rep["radius"]
        t.add_row("certified radius: median / p10", f"{r['median']:.4f} / {r['quantiles']['p10']:.4f}")
    p = rep["psnr_db"]
    ref = p.get("reference", "original glyphs").split(" (peak")[0]
    t.add_row(f"PSNR vs {ref} (mean / min per class)", "identical" if p["mean"] is None and p["min"] is None else
              f"{_fmt(p['mean'], False)} / {_fmt(p['min'], False)} dB")
    t.add_row("time", f"{rep['seconds']['total']:.1f} s")
    console.print(t)

    w = Table(title="weakest glyphs (highest certified error, then lowest median radius)")
    for col in ("char", "clean", "attack", "certified", "certified (IBP)", "median radius", "PSNR dB"):
        w.add_column(col, justify="right" if col != "char" else "left")
    for c in rep["weakest"][:weakest]:
        row = rep["per_char"][c]
        w.add_row(
            c, _fmt(row["clean_error"]), _fmt(row.get("attack_error")), _fmt(row["certified_error"]),
            _fmt(row["certified_error_by_method"].get("ibp")),
            "-" if row.get("radius_median") is None else f"{row['radius_median']:.4f}",
            "inf" if row["psnr_db"] is None else f"{row['psnr_db']:.1f}",
        )
    console.print(w)


def evaluate(
    run_dir: Path = typer.Argument(..., help="A run folder: from `a5ocr design` (glyphs.safetensors, classifier.safetensors, config.json) or from `a5ocr robustify` (its test set, defended by the run's recipe)."),
    original: bool = typer.Option(False, "--original", help="The 'before' column: the unmodified font glyphs (design run), or the classifier before A5 on undefended images (robustify run)."),
    classifier: Optional[Path] = typer.Option(None, help="Another classifier file to evaluate on the run's glyphs (e.g. RUN/baseline_classifier.safetensors); default RUN/classifier.safetensors."),
    samples_per_char: int = typer.Option(100, "--samples-per-char", help="Fresh random acquisitions per character."),
    seed: Optional[int] = typer.Option(None, help="Seed of the acquisitions (and of the attack); default: the run's evaluation seed, distinct from its training seed."),
    eps_a: Optional[float] = typer.Option(None, "--eps-a", help="Attack budget (L-inf on the acquired image) in (0, 1); default: the run's eps_a (0 with --eps-print)."),
    eps_print: float = typer.Option(0.0, "--eps-print", help="Physical attack on the print: L-inf change of the glyph's ink in [0, 1), certified jointly with --eps-a through each acquisition's camera; 0 (default): the image attack alone. Design runs only; no certified radius."),
    method: Optional[List[str]] = typer.Option(None, "--method", help="Certification method: ibp, crown-ibp, crown, alpha-crown; repeatable. Default: ibp then crown-ibp. IBP always runs first and is reported alone."),
    cascade: bool = typer.Option(True, "--cascade/--no-cascade", help="Cascade: each later method only on the samples the earlier ones left uncertified (same certified set, far cheaper)."),
    attack: str = typer.Option("standard", help="Empirical attack: standard (AutoAttack's suite: APGD-CE, APGD-T, FAB-T, Square; then PGD restarts), fast, or none."),
    check_fraction: float = typer.Option(0.1, "--check-fraction", help="Fraction of the certified samples also attacked (seeded), as a soundness cross-check; uncertified correct samples are always attacked."),
    check_attack: str = typer.Option("fast", "--check-attack", help="Attack used on the certified check subset: fast (default; a robust sample runs every stage, so standard costs ~7x), standard."),
    attack_all: bool = typer.Option(False, "--attack-all", help="Attack every correctly classified sample, certified or not."),
    radius_steps: int = typer.Option(10, "--radius-steps", help="Bisection steps of the certified radius (0: skip the radius)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every figure to this JSON file."),
    histogram: Optional[Path] = typer.Option(None, help="Histogram PNG of the certified radius (default: certified_radius[-original].png beside --json, or in the run folder)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    weakest: int = typer.Option(10, help="Number of weakest glyphs to list."),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
) -> None:
    """Evaluate a design or robustify run: clean, attack and certified error, certified radius, PSNR, per class."""
    from a5ocr.evaluation import check_options  # local: keep a5ocr --help fast (torch)
    from a5ocr.runtime import pick_device, set_threads  # local: keep a5ocr --help fast (torch)

    set_threads(threads, EvaluateError)
    methods = check_options(eps_a=eps_a, methods=tuple(method) if method else ("ibp", "crown-ibp"), attack=attack,
                            check_fraction=check_fraction, check_attack=check_attack, samples_per_char=samples_per_char,
                            radius_steps=radius_steps, eps_print=eps_print)
    if json_out is not None and not json_out.parent.is_dir():
        raise EvaluateError(f"cannot write --json {json_out}: folder {json_out.parent} does not exist")
    if weakest < 0:
        raise EvaluateError("--weakest must be >= 0")
    dev = pick_device(device, EvaluateError)
    options = dict(original=original, device=dev, eps_a=eps_a, seed=seed, samples_per_char=samples_per_char,
                   methods=methods, cascade=cascade, attack=attack, check_fraction=check_fraction,
                   check_attack=check_attack, attack_all=attack_all, radius_steps=radius_steps)
    if eps_print > 0:
        options["eps_print"] = eps_print
    err_console = Console(stderr=True)
    ev = _evaluate_with_progress(run_dir, classifier, options, err_console)
    rep = ev.report(weakest=max(weakest, 10))
    broken_path = _write_outputs(ev, rep, Path(run_dir), json_out, histogram, original)

    out = Console()
    print_report(rep, out, weakest)
    if json_out is not None:
        out.print(f"figures written to {json_out}")
    if rep["consistency"]["violations"]:
        _report_inconsistency(ev, rep, broken_path, err_console)
        raise SystemExit(EXIT_INCONSISTENT)  # typer.Exit would be swallowed by standalone_mode=False


def _evaluate_with_progress(run_dir: Path, classifier: Optional[Path], options: dict, err_console: Console) -> "Evaluation":
    """The evaluation of a design run (``evaluate_run``) or of a robustify run, with one progress
    bar per phase; ``options``: those of both (original, device, eps_a, seed, ...)."""
    from a5ocr.evaluation import evaluate_run  # local: keep a5ocr --help fast (torch)
    from a5ocr.robustify import evaluate_robustify_run, is_robustify_run  # local: keep a5ocr --help fast (torch)
    from a5ocr.runs import load_run  # local: keep a5ocr --help fast (torch)

    image_side = is_robustify_run(run_dir)
    if image_side and classifier is not None:
        raise EvaluateError("--classifier does not apply to a robustify run (use --original for the classifier before A5)")
    if image_side and options.get("eps_print"):
        raise EvaluateError("--eps-print needs a design run (printed glyphs); a robustify run has images only")
    run = None if image_side else load_run(run_dir, classifier)
    labels = {"certify": "certify + radius", "attack": f"attack ({options['attack']})",
              "check": f"check certified ({options['check_attack']})"}

    with progress_bars(err_console, width=24) as progress:  # rich bars on a terminal, else plain lines
        tasks: dict[str, int] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(labels.get(phase, phase), total=max(total, 1), stats="")
            progress.update(tasks[phase], completed=done, total=max(total, 1))

        if image_side:
            return evaluate_robustify_run(run_dir, **options, on_progress=on_progress)
        return evaluate_run(run, **options, on_progress=on_progress)


def _write_outputs(ev: "Evaluation", rep: dict, run_path: Path, json_out: Optional[Path], histogram: Optional[Path],
                   original: bool) -> Optional[Path]:
    """The radius histogram, the broken certificates (if any) and the --json report, beside
    --json or in the run folder; adds their paths to ``rep``. Returns the broken-certificate file."""
    from a5ocr.evaluation import save_broken  # local: keep a5ocr --help fast (torch)
    from a5ocr.figures import histogram as draw_histogram  # local: keep a5ocr --help fast (matplotlib)

    out_dir = json_out.parent if json_out is not None else run_path
    suffix = "-original" if original else ""
    broken_path = None
    try:
        if ev.radius is not None:
            hist = histogram or out_dir / f"certified_radius{suffix}.png"
            draw_histogram(ev.radius.numpy(), hist, f"certified radius ({what_of(rep)}, {rep['samples']} samples)",
                           f"largest certified L-inf radius (eps_A = {rep['eps_a']:g})")
            rep["histogram"] = str(hist)
        if ev.broken:
            broken_path = out_dir / "broken_certificates.safetensors"
            save_broken(broken_path, ev, {"run": run_path, "eps_a": rep["eps_a"], "seed": rep["seed"],
                                          "chars": json.dumps(rep.get("chars") or list(rep["per_char"]))})
            rep["broken_certificates_file"] = str(broken_path)
        if json_out is not None:
            write_json(json_out, rep)
    except OSError as err:
        raise EvaluateError(f"cannot write results: {err}") from None
    return broken_path


def _report_inconsistency(ev: "Evaluation", rep: dict, broken_path: Optional[Path], err_console: Console) -> None:
    """Each consistency violation in red, and the first broken certificates with where they were saved."""
    import numpy as np  # local: keep a5ocr --help fast

    for v in rep["consistency"]["violations"]:
        err_console.print(f"[bold red]INCONSISTENT:[/] {v}", highlight=False)
    if ev.broken:
        idx = ev.broken["index"].tolist()
        labels = ev.broken["labels"].tolist()
        for i, (n, y) in enumerate(list(zip(idx, labels))[:10]):
            m = ev.broken["margins_adv"][i]
            err_console.print(f"  broken certificate: sample {n}, class {list(rep['per_char'])[y]!r}, "
                              f"min margin at x_adv {float(np.delete(m.numpy(), y).min()):.3g}", highlight=False)
        err_console.print(f"  saved to {broken_path}", highlight=False)
