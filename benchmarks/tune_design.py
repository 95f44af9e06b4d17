"""Run several `a5ocr design` configurations side by side and print their results.

Not a test: an experiment driver used to choose the presets' defaults. Each configuration is a
JSON object of DesignConfig overrides (config field names, e.g. ``samples_per_char``; the old
``eval_samples`` is mapped by ``DesignConfig.from_dict``);
all run in parallel processes (e.g. on one GPU).

    python benchmarks/tune_design.py --out renders/tune --configs '[{"stage2_steps": 2000}, {"copies": 4}]'
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import torch

from a5ocr.training.design import DesignConfig, run_design


def _run(args: tuple[int, dict, str, int]) -> dict:
    idx, overrides, out, threads = args
    torch.set_num_threads(threads)
    cfg = DesignConfig.from_dict({**overrides, "out": str(Path(out) / f"cfg{idx}")})
    t = time.time()
    try:
        s = run_design(cfg)
    except Exception as err:  # report and go on with the others
        return {"idx": idx, "overrides": overrides, "error": repr(err)}
    return {
        "idx": idx, "overrides": overrides, "wall": round(time.time() - t, 1),
        "baseline": [s["baseline"]["clean_error"], s["baseline"]["certified_error"]],
        "final": [s["final"]["clean_error"], s["final"]["certified_error"]],
        "by_method": s["final"]["certified_error_by_method"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", required=True, help="JSON list of DesignConfig overrides")
    ap.add_argument("--common", default="{}", help="JSON overrides applied to every configuration")
    ap.add_argument("--out", default="renders/tune")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=0)
    a = ap.parse_args()
    common = json.loads(a.common)
    configs = [{**common, **c} for c in json.loads(a.configs)]
    ctx = mp.get_context("spawn")
    with ctx.Pool(a.jobs or len(configs)) as pool:
        rows = pool.map(_run, [(i, c, a.out, a.threads) for i, c in enumerate(configs)])
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "tune.json").write_text(json.dumps(rows, indent=1))
    print(f"{'#':>2} {'wall s':>7} {'base clean':>10} {'base cert':>9} {'final clean':>11} {'final cert':>10}  overrides")
    for r in rows:
        if "error" in r:
            print(f"{r['idx']:>2} ERROR {r['error']}  {r['overrides']}")
            continue
        b, f = r["baseline"], r["final"]
        print(f"{r['idx']:>2} {r['wall']:>7} {b[0]:>10.2%} {b[1]:>9.2%} {f[0]:>11.2%} {f[1]:>10.2%}  {r['overrides']}  {r['by_method']}")


if __name__ == "__main__":
    main()
