"""``a5ocr reproduce --table 9``: the four rows of the paper's Table 9 on one protocol.

Rows (one acquisition model, one evaluation: same eval seed, same samples, same attack):

* ``vanilla``   -- a classifier trained without certified bounds, original glyphs;
* ``crown-ibp`` -- the certified (CROWN-IBP -> IBP) classifier, original glyphs: stage 1 of the
  A5/PC run (its ``baseline_classifier.safetensors``);
* ``a5p``       -- A5/P: glyphs trained for that fixed CROWN-IBP classifier;
* ``a5pc``      -- A5/PC: glyphs and classifier trained together (from the same stage 1).

Training goes through ``a5ocr.training.design.run_design`` (one run folder per trained row, under the
output folder); every row is then evaluated with ``a5ocr.evaluation.evaluate_full``.
Resumable: a row whose run folder holds ``summary.json`` is not trained again, an interrupted
one resumes from its checkpoint, and an evaluation whose protocol and files are unchanged is
read back from ``eval-<row>.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from a5ocr.errors import CollapseError
from a5ocr.evaluation import EvaluateError, Evaluation, check_options, evaluate_run, save_broken
from a5ocr.runio import read_jsonl, write_json
from a5ocr.runs import RunFolder, default_eval_seed, load_run, settings_diff, slug
from a5ocr.runtime import Reporter, environment, pick_device
from a5ocr.training.design import DesignConfig, run_design, stage1_label
from a5ocr.training.trainer import bounds_label

# The published figures (reference.md, Table 9, eps_A = 0.1).
PAPER_TABLE9: dict[str, dict] = {
    "vanilla": {"label": "Vanilla classifier", "clean_error": 0.0089, "certified_error": 1.0},
    "crown-ibp": {"label": "CROWN-IBP classifier", "clean_error": 0.0385, "certified_error": 0.1385},
    "a5p": {"label": "A5/P (glyphs changed, classifier fixed)", "clean_error": 0.0308, "certified_error": 0.1184},
    "a5pc": {"label": "A5/PC (glyphs and classifier together)", "clean_error": 0.0073, "certified_error": 0.0420},
}
ROWS = ("vanilla", "crown-ibp", "a5p", "a5pc")


@dataclass
class ReproduceConfig:
    """Everything ``reproduce`` depends on."""

    table: int = 9
    font: str = "comic-neue"
    chars: str = "62"
    eps_a: float = 0.1
    preset: str = "cpu"
    seed: int = 0
    device: str = "auto"
    samples_per_char: int = 100
    attack: str = "standard"
    check_fraction: float = 0.1
    check_attack: str = "fast"
    methods: tuple[str, ...] = ("ibp", "crown-ibp")
    radius_steps: int = 10
    out: str | None = None
    stage1_steps: int | None = None
    stage2_steps: int | None = None
    warmup: int | None = None  # stage 1's eps schedule (default: the preset's, scaled to stage1_steps)
    ramp: int | None = None
    design_eval_samples: int = 2  # the design runs' own end-of-run evaluation (every row is re-evaluated here)
    extra: dict = field(default_factory=dict)  # more DesignConfig fields (tests: certify_methods, ...)

    def check(self) -> None:
        if self.table != 9:
            raise EvaluateError(f"--table {self.table} is not supported: only Table 9 (the OCR experiment) is")
        check_options(eps_a=self.eps_a, methods=tuple(self.methods), attack=self.attack, check_fraction=self.check_fraction,
                      samples_per_char=self.samples_per_char, radius_steps=self.radius_steps, check_attack=self.check_attack)

    @property
    def eval_seed(self) -> int:
        """The evaluation seed of every row: the design runs' default rule (seed + 1000003)."""
        return default_eval_seed(self.seed)


def default_out(font: str) -> Path:
    name = Path(font).stem if ("/" in font or "." in font) else font
    return Path("renders") / f"table9-{slug(name)}"


class ReproduceReporter(Reporter):
    """Design progress callbacks plus the row being worked on and evaluation progress."""

    def row(self, key: str, what: str) -> None: ...
    def eval_progress(self, key: str, phase: str, done: int, total: int) -> None: ...


def _design_configs(cfg: ReproduceConfig, out: Path) -> dict[str, DesignConfig]:
    common = dict(
        font=cfg.font, chars=cfg.chars, eps_a=cfg.eps_a, preset=cfg.preset, seed=cfg.seed, device=cfg.device,
        stage1_steps=cfg.stage1_steps, stage2_steps=cfg.stage2_steps, warmup=cfg.warmup, ramp=cfg.ramp,
        samples_per_char=cfg.design_eval_samples,
        # Table 9 is the paper's setup: the glyph on the sensor's grid (``extra`` may ask for a print scale)
        certify_methods=("ibp",), **{"print_scale": 1, "parameterisation": None, **cfg.extra},
    )
    baseline = out / "a5pc" / "baseline_classifier.safetensors"
    return {
        "a5pc": DesignConfig(**common, recipe="pc", out=str(out / "a5pc")),
        "a5p": DesignConfig(**common, recipe="p", classifier=str(baseline), out=str(out / "a5p")),
        "vanilla": DesignConfig(**common, recipe="none", classifier_recipe="vanilla", out=str(out / "vanilla")),
    }


def _train(key: str, dcfg: DesignConfig, rep: ReproduceReporter) -> dict:
    """Train one row (or find it done); returns {"seconds", "trained_now", "summary"}."""
    out = Path(dcfg.out)
    summary_path = out / "summary.json"
    config_path = out / "config.json"
    wanted = json.loads(json.dumps(dcfg.resolved().to_dict()))
    if config_path.is_file():
        try:
            old = json.loads(config_path.read_text())["config"]
        except (OSError, ValueError, KeyError) as err:
            raise EvaluateError(f"{config_path} is unreadable ({err}); remove {out} or use another --out") from None
        diff = settings_diff(old, wanted)  # legacy names (an older row folder's) mapped
        if diff:
            raise EvaluateError(f"{out} holds a run with other settings ({', '.join(diff)}); use another --out")
    if summary_path.is_file():
        rep.row(key, "trained already (summary.json found): not trained again")
        s = json.loads(summary_path.read_text())
        return {"seconds": s.get("wall_seconds"), "trained_now": False, "summary": s}
    resume = (out / "checkpoint.pt").is_file()
    rep.row(key, "resuming training" if resume else "training")
    t0 = time.monotonic()
    try:
        s = run_design(dcfg, resume=resume, reporter=rep)
    except CollapseError as err:
        raise EvaluateError(f"row {key}: {err}") from None
    return {"seconds": round(time.monotonic() - t0, 1), "trained_now": True, "summary": s}


def _stage1_seconds(run_dir: Path) -> float | None:
    """Wall seconds at the end of stage 1 of a run (from metrics.jsonl)."""
    recs = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("stage") in ("crown-ibp", "vanilla")]
    return recs[-1].get("wall_seconds") if recs else None


def _stage1_training(out: Path) -> dict:
    """How the rows' certified classifier was trained (the A5/PC run's config.json): net,
    camera perspective rate, training bounds and their label (``design.stage1_label``)."""
    cfg = json.loads((out / "a5pc" / "config.json").read_text())["config"]
    bounds, k = cfg.get("train_bounds"), cfg.get("crown_k")
    return {"arch": cfg.get("arch"), "perspective_p": (cfg.get("acquisition") or {}).get("perspective_p"),
            "train_bounds": bounds, "crown_k": k, "label": stage1_label("crown-ibp", bounds, k)}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _evaluate_row(
    key: str, run_dir: Path, classifier: Path | None, original: bool, cfg: ReproduceConfig, out: Path,
    device: torch.device, rep: ReproduceReporter,
) -> tuple[dict, Evaluation | None]:
    """Evaluate one row with the common protocol; cached in ``eval-<key>.json``."""
    cache = out / f"eval-{key}.json"
    clf = classifier or run_dir / "classifier.safetensors"
    files = {"classifier": _sha(clf), "glyphs": _sha(run_dir / "glyphs.safetensors")} if clf.is_file() else {}
    protocol = {
        "eps_a": cfg.eps_a, "seed": cfg.eval_seed, "samples_per_char": cfg.samples_per_char,
        "methods": list(cfg.methods), "attack": cfg.attack, "check_fraction": cfg.check_fraction,
        "check_attack": cfg.check_attack, "radius_steps": cfg.radius_steps, "original": original, "files": files,
    }
    if cache.is_file():
        try:
            old = json.loads(cache.read_text())
            if old.get("cache_key") == protocol:
                rep.row(key, f"evaluation read back from {cache.name}")
                return old, None
        except (OSError, ValueError):
            pass
    rep.row(key, "evaluating")
    run = load_run(run_dir, classifier)
    ev = evaluate_run(
        run, original=original, device=device, eps_a=cfg.eps_a, seed=cfg.eval_seed,
        samples_per_char=cfg.samples_per_char, methods=cfg.methods, attack=cfg.attack,
        check_fraction=cfg.check_fraction, check_attack=cfg.check_attack, radius_steps=cfg.radius_steps,
        on_progress=lambda phase, d, t: rep.eval_progress(key, phase, d, t),
    )
    report = ev.report()
    report["cache_key"] = protocol
    if ev.broken:
        path = out / f"broken_certificates-{key}.safetensors"
        save_broken(path, ev, {"row": key, "run": run_dir, "eps_a": cfg.eps_a, "seed": cfg.eval_seed})
        report["broken_certificates_file"] = str(path)
    write_json(cache, report)
    return report, ev


# What each row evaluates: (run folder under the output folder, classifier file or None for the
# run's own, original glyphs?).
def _plan(out: Path) -> dict[str, tuple[Path, Path | None, bool]]:
    pc_dir = out / "a5pc"
    return {
        "vanilla": (out / "vanilla", None, True),
        "crown-ibp": (pc_dir, pc_dir / "baseline_classifier.safetensors", True),
        "a5p": (out / "a5p", None, False),
        "a5pc": (pc_dir, None, False),
    }


_TRAIN_NOTES = {"a5pc": "includes the certified stage 1", "a5p": "glyphs only; reuses the certified stage-1 classifier",
                "vanilla": "plain cross-entropy classifier"}


def reproduce(cfg: ReproduceConfig, reporter: ReproduceReporter | None = None) -> dict:
    """Train (or find) and evaluate the four rows; write table9.md and table9.json; return the record."""
    rep = reporter or ReproduceReporter()
    cfg.check()
    cfg = replace(cfg, methods=tuple(cfg.methods))
    t_start = time.monotonic()
    out = Path(cfg.out) if cfg.out else default_out(cfg.font)
    dcfgs = _design_configs(cfg, out)
    for d in dcfgs.values():  # every row's settings checked (DesignError) before a folder is made
        d.resolved()
    out = RunFolder.open(out, EvaluateError).path
    device = pick_device(cfg.device)
    training = _train_rows(dcfgs, rep)
    rows, broken_total, violations = [], 0, []
    for key in ROWS:
        row, report = _table_row(key, cfg, out, device, training, rep)
        broken_total += row["broken_certificates"]
        violations += [f"{key}: {v}" for v in report["consistency"]["violations"]]
        rows.append(row)
    record = _record(cfg, out, device, training, rows, broken_total, violations, t_start)
    write_json(out / "table9.json", record)
    (out / "table9.md").write_text(table_markdown(record))
    record["out"] = str(out)
    return record


def _train_rows(dcfgs: dict[str, DesignConfig], rep: ReproduceReporter) -> dict[str, dict]:
    """The three trained rows (their settings ``_design_configs``', checked already)."""
    # a5pc first: its stage 1 is the certified row and A5/P's classifier
    return {key: _train(key, dcfgs[key], rep) for key in ("a5pc", "a5p", "vanilla")}


def _table_row(key: str, cfg: ReproduceConfig, out: Path, device: torch.device, training: dict[str, dict],
               rep: ReproduceReporter) -> tuple[dict, dict]:
    """One row of the table (and its evaluation report): evaluated, with its training time."""
    run_dir, clf, original = _plan(out)[key]
    report, _ = _evaluate_row(key, run_dir, clf, original, cfg, out, device, rep)
    cert = report["certified_error"]
    best = cert.get("best", list(cert.values())[-1])
    if key == "crown-ibp":
        train_s = _stage1_seconds(out / "a5pc")
        note = "stage 1 of the A5/PC run (its baseline classifier)"
    else:
        t = training[key]
        train_s = t["seconds"]
        note = _TRAIN_NOTES[key]
        if not t["trained_now"]:
            note += "; trained earlier (time from its summary.json)"
    stage1 = _stage1_training(out)
    row = {
        "key": key,
        # the certified row is a "CROWN-IBP classifier" only when trained with the paper's mix
        "label": stage1["label"] if key == "crown-ibp" else PAPER_TABLE9[key]["label"],
        "train_bounds": None if key == "vanilla" else stage1["train_bounds"],
        "run": str(run_dir),
        "glyphs": "original" if original else "robust",
        "classifier": str(clf or run_dir / "classifier.safetensors"),
        "clean_error": report["clean_error"],
        "attack_error": report.get("attack_error"),
        "certified_error_ibp": cert["ibp"],
        "certified_error": best,
        "certified_error_by_method": cert,
        "broken_certificates": report.get("broken_certificates", 0),
        "consistent": report["consistency"]["ok"],
        "radius_median": (report.get("radius") or {}).get("median"),
        "psnr_db_mean": report["psnr_db"]["mean"],
        "paper": {k: PAPER_TABLE9[key][k] for k in ("clean_error", "certified_error")},
        "train_seconds": train_s,
        "train_note": note,
        "eval_seconds": report["seconds"]["total"],
        "evaluation": str(out / f"eval-{key}.json"),
    }
    return row, report


def _record(cfg: ReproduceConfig, out: Path, device: torch.device, training: dict[str, dict], rows: list[dict],
            broken_total: int, violations: list[str], t_start: float) -> dict:
    """table9.json: the rows, the common protocol (from the first row's evaluation) and the machine."""
    env = environment()
    first = json.loads((out / f"eval-{ROWS[0]}.json").read_text())
    attacked = first.get("attacked")
    return {
        "table": 9,
        "font": training["a5pc"]["summary"].get("family", cfg.font),
        "chars": training["a5pc"]["summary"].get("chars"),
        "config": {**asdict(cfg), "methods": list(cfg.methods)},
        "protocol": {
            "eps_a": cfg.eps_a, "seed": cfg.eval_seed, "samples_per_char": cfg.samples_per_char,
            "samples": first["samples"], "methods": list(cfg.methods), "cascade": True,
            "attacked": {k: attacked[k] for k in ("attack", "policy", "check_fraction", "check_attack")} if attacked else {"attack": "none"},
            "resolution": first.get("resolution"),
            "stage1": _stage1_training(out),
        },
        "rows": rows,
        "broken_certificates": broken_total,
        "consistency": {"ok": not violations, "violations": violations},
        "device": str(device),
        "environment": env,
        "wall_seconds": round(time.monotonic() - t_start, 1),
    }


def _training_line(protocol: dict) -> str:
    """The net, camera and training bounds of the table, in one sentence (older records: empty)."""
    s = protocol.get("stage1")
    if not s:
        return ""
    mixed = s["train_bounds"] == "mixed"
    bounds = ("the paper's " if mixed else "") + bounds_label(s["train_bounds"], s["crown_k"]) + " bounds"
    return (f"Net `{s['arch']}`; camera perspective applied with p = {s['perspective_p']}; the certified classifier "
            f"(rows 2-4) trained with {bounds}" + ("" if mixed else " (the paper: the CROWN-IBP/IBP mix)") + ".")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def table_markdown(rec: dict) -> str:
    """table9.md: our rows beside the paper's, with the protocol and the machine."""
    p = rec["protocol"]
    env = rec["environment"]
    att = p["attacked"]
    lines = [
        f"# Table 9 reproduced: {rec['font']}, {len(rec['chars'] or '')} characters, eps_A = {p['eps_a']:g}",
        "",
        f"Preset `{rec['config']['preset']}` ({p.get('resolution')}x{p.get('resolution')}), training seed {rec['config']['seed']}. "
        f"Every row on the same {p['samples']} fresh acquisitions ({p['samples_per_char']} per character, eval seed {p['seed']}).",
        f"Certified error: IBP alone, and the sound cascade {' then '.join(p['methods'])} (a sample counts as certified when any method proves it), float64.",
        _training_line(p),
        f"Attack: `{att['attack']}`" + (f" on every uncertified sample, `{att['check_attack']}` on a random {att['check_fraction']:.0%} of the certified ones (soundness check; the others count as not broken, as their certificate proves)." if att["attack"] != "none" else "."),
        "",
        "| recipe | clean error | attack error | certified error (IBP) | certified error (cascade) | paper: clean [certified] | train s | eval s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rec["rows"]:
        ts = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        lines.append(
            f"| {r['label']} | {_pct(r['clean_error'])} | {_pct(r['attack_error'])} | {_pct(r['certified_error_ibp'])} | "
            f"{_pct(r['certified_error'])} | {_pct(r['paper']['clean_error'])} [{_pct(r['paper']['certified_error'])}] | {ts} | {r['eval_seconds']:.0f} |"
        )
    lines += [
        "",
        "Train seconds: " + "; ".join(f"{r['key']}: {r['train_note']}" for r in rec["rows"]) + ".",
        f"Broken certificates: {rec['broken_certificates']}; consistency (clean <= attack <= certified): "
        + ("ok" if rec["consistency"]["ok"] else "VIOLATED: " + "; ".join(rec["consistency"]["violations"])) + ".",
        "",
        f"Machine: {env.get('processor')}, {env.get('torch_threads')} torch threads, device {rec['device']}"
        + (f" ({env['cuda']})" if env.get("cuda") else "")
        + f"; torch {env['versions'].get('torch')}, a5ocr {env['versions'].get('a5ocr')}; total {rec['wall_seconds']:.0f} s.",
        "",
        "The paper's figures are for Comic Sans MS at 128x128 with its network and schedule; "
        "rows here use the preset above, so compare the ordering and the gaps, not the last digit.",
        "",
    ]
    return "\n".join(lines)


__all__ = ["PAPER_TABLE9", "ROWS", "ReproduceConfig", "ReproduceReporter", "reproduce", "table_markdown"]
