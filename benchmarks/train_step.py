"""Step time of stage-1 certified training on a preset: IBP vs the paper's mix (not a test; a script).

The real training step (``Trainer.train_step``: a fresh batch through the camera, the loss
``f * CE + (1 - f) * worst-case CE`` with the preset's net, backward, optimiser step) of the
CROWN-IBP stage, at a step in the middle of the eps ramp (eps = eps_A / 2 by default, so the mix
weight f is about 0.5 and the relaxation runs), for each of:

* ``clean``: a warmup step (eps 0: plain cross-entropy, no bounds);
* ``ibp``: IBP bounds (what the CPU preset trains with);
* ``mixed``: lb = f * CROWN-IBP + (1 - f) * IBP on every margin (the paper's recipe);
* ``mixed-kN``: the same with CROWN-IBP on the N hardest margins by IBP only (``--crown-k N``).

One warm-up step, then ``--repeats`` timed steps; medians (wall and process CPU time) and ratios to
``ibp`` in one run, and stage 1's projected time (``_projection``).

    PYTHONPATH=. python benchmarks/train_step.py [--preset cpu] [--ks 4 8 16] [--repeats 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from a5ocr import models
from a5ocr.acquisition import Acquisition, AcquisitionConfig
from a5ocr.glyphs import rasterize
from a5ocr.training.config import PRESETS
from a5ocr.training.trainer import RobustGlyphs, Trainer, make_stage


def _trainer(preset: dict, chars: str, seed: int) -> Trainer:
    glyphs = rasterize("comic-neue", chars, preset["resolution"])
    torch.manual_seed(seed)
    model = models.build(preset["arch"], preset["resolution"], len(glyphs.chars))
    acq = Acquisition(preset["resolution"], AcquisitionConfig())
    return Trainer(model, RobustGlyphs(glyphs.images, 0.5), acq, copies=preset["copies"], seed=seed,
                   device=torch.device("cpu"))


def _time(preset: dict, chars: str, eps_a: float, bounds: str, k: int | None, repeats: int,
          at_step: int) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) of ``repeats`` steps after one warm-up step."""
    trainer = _trainer(preset, chars, 0)
    spec = make_stage("crown-ibp", preset["stage1_steps"], eps_a, warmup=preset["warmup"], ramp=preset["ramp"],
                      train_bounds=bounds, crown_k=k)
    trainer.start_stage(spec)
    trainer.step = at_step
    wall, cpu = [], []
    for i in range(repeats + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train_step(spec)
        trainer.step = at_step  # stay at the same point of the schedule
        if i:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return wall, cpu


def _projection(preset: dict, med: dict[str, float]) -> str:
    """Stage 1's projected time from the measured steps: the warmup at eps 0 (clean steps), the
    ramp (the mix f from 1 to 0: every ramp step charged the mid-ramp ``mixed`` cost, f = 0.5),
    then eps_A with f = 0 (pure IBP: the relaxation is skipped)."""
    warm, ramp = preset["warmup"], preset["ramp"]
    rest = preset["stage1_steps"] - warm - ramp
    t = warm * med["clean"] + ramp * med["mixed"] + rest * med["ibp"]
    return (f"stage 1 projected: {warm} clean x {med['clean']:.2f} s + {ramp} mixed x {med['mixed']:.2f} s + "
            f"{rest} IBP x {med['ibp']:.2f} s = {t / 3600:.1f} h")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    ap.add_argument("--chars", default="62")
    ap.add_argument("--eps-a", type=float, default=0.1)
    ap.add_argument("--ks", type=int, nargs="*", default=[4, 8, 16])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    sched = make_stage("crown-ibp", preset["stage1_steps"], args.eps_a, warmup=preset["warmup"], ramp=preset["ramp"]).schedule
    # the step of the ramp where eps first reaches eps_A / 2
    at = next(s for s in range(preset["stage1_steps"]) if sched(s) >= args.eps_a / 2)
    print(f"preset {args.preset} ({preset['resolution']}x{preset['resolution']}, net {preset['arch']}, batch "
          f"{preset['copies']} x {args.chars} chars), step {at}: eps {sched(at):.4f}, f {sched.mixing(at):.3f}; "
          f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}")
    rows = [("clean", "ibp", None), ("ibp", "ibp", None), ("mixed", "mixed", None)] + [
        (f"mixed-k{k}", "mixed", k) for k in args.ks]
    med = {}
    print("| training bounds | step s (median) | min | CPU s (median) | repeats | x ibp |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, bounds, k in rows:
        # "clean": a warmup step (eps 0: plain cross-entropy, no bounds)
        wall, cpu = _time(preset, args.chars, args.eps_a, bounds, k, args.repeats, 0 if name == "clean" else at)
        med[name] = statistics.median(wall)
        ratio = f"{med[name] / med['ibp']:.1f}" if "ibp" in med else "-"
        print(f"| {name} | {med[name]:.3f} | {min(wall):.3f} | {statistics.median(cpu):.3f} | {len(wall)} | {ratio} |",
              flush=True)
    print(_projection(preset, med))

if __name__ == "__main__":
    main()
