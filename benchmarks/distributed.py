"""Step time of distributed training: 1 vs N processes under torchrun (not a test; a script).

For each preset and each process count, this script launches itself under
``python -m torch.distributed.run --standalone --nproc-per-node N`` and times the real training
step (``Trainer.train_step`` with ``a5ocr.training.distributed``: each process draws 1/N of the
step's acquisitions, backward, the gradient all-reduce, the optimiser step) of

* ``stage1``: the preset's stage-1 classifier training, at the step of the eps ramp where eps
  first reaches eps_A / 2 (as ``benchmarks/train_step.py``);
* ``pc``: A5/PC (glyph change z and classifier) at eps_A.

The global batch is the preset's (``copies`` x characters) whatever N, so the step time of N
processes against 1 is the speed-up. Each process uses ``--threads`` torch threads (default: the
machine's cores / N, so that every count uses the same cores). One warm-up step, then ``--steps``
timed steps on rank 0 (each step ends in the all-reduce, so the ranks move together); medians.

    PYTHONPATH=. python benchmarks/distributed.py [--presets tiny cpu] [--procs 1 2] [--steps 20]
        [--device cpu|cuda] [--threads T]

A very short check that it runs: ``--presets tiny --steps 2``. On a machine shared with other
work, ``--threads 1`` compares the process counts at one thread each (torch's threads
oversubscribe a busy machine: one process at 2 threads can be many times slower than at 1). On CUDA (``--device cuda``) each
process takes GPU ``LOCAL_RANK`` with NCCL: N must not exceed the GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from a5ocr import models
from a5ocr.acquisition import Acquisition, AcquisitionConfig
from a5ocr.glyphs import rasterize
from a5ocr.training.config import PRESETS
from a5ocr.training.distributed import Distributed
from a5ocr.training.trainer import RobustGlyphs, Trainer, make_stage


def _stages(preset: dict, eps_a: float):
    """(name, spec, the step to time at) for stage 1 mid-ramp and A5/PC."""
    s1 = make_stage("crown-ibp", preset["stage1_steps"], eps_a, warmup=preset["warmup"], ramp=preset["ramp"],
                    train_bounds=preset["train_bounds"])
    at = next(s for s in range(preset["stage1_steps"]) if s1.schedule(s) >= eps_a / 2)
    pc = make_stage("pc", preset["stage2_steps"], eps_a, train_bounds=preset["train_bounds"])
    return [("stage1", s1, at), ("pc", pc, 0)]


def _time_stage(trainer: Trainer, spec, at: int, steps: int) -> list[float]:
    trainer.start_stage(spec)
    times = []
    for i in range(steps + 1):
        trainer.step = at  # stay at the same point of the schedule
        t0 = time.perf_counter()
        trainer.train_step(spec)
        if i:
            times.append(time.perf_counter() - t0)
    return times


def worker(args) -> None:
    """One process of a torchrun launch: time every stage, rank 0 appends the rows to ``--result``."""
    dist = Distributed.from_env()
    torch.set_num_threads(args.threads)
    device = dist.start(torch.device(args.device))
    try:
        preset = PRESETS[args.preset]
        glyphs = rasterize("comic-neue", args.chars, preset["resolution"])
        torch.manual_seed(0)
        model = models.build(preset["arch"], preset["resolution"], len(glyphs.chars))
        acq = Acquisition(preset["resolution"], AcquisitionConfig())
        trainer = Trainer(model, RobustGlyphs(glyphs.images, 0.5), acq, copies=preset["copies"], seed=0, device=device,
                          dist=dist)
        for name, spec, at in _stages(preset, args.eps_a):
            ts = _time_stage(trainer, spec, at, args.steps)
            if dist.is_main:
                row = {"preset": args.preset, "stage": name, "procs": dist.world_size, "threads": args.threads,
                       "batch": preset["copies"] * len(glyphs.chars), "median_s": statistics.median(ts), "min_s": min(ts),
                       "steps": len(ts), "backend": dist.backend or "-"}
                with open(args.result, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
    finally:
        dist.close()


def _launch(args, preset: str, procs: int, result: Path) -> None:
    threads = args.threads or max(1, (os.cpu_count() or 1) // procs)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), __file__,
           "--worker", "--preset", preset, "--chars", args.chars, "--eps-a", str(args.eps_a), "--steps", str(args.steps),
           "--device", args.device, "--threads", str(threads), "--result", str(result)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(cmd, check=True, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="*", default=["tiny", "cpu"], choices=sorted(PRESETS))
    ap.add_argument("--procs", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--chars", default="62")
    ap.add_argument("--eps-a", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads per process (0: cores / processes)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="tiny", help=argparse.SUPPRESS)
    ap.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "rows.jsonl"
        for preset in args.presets:
            for procs in args.procs:
                _launch(args, preset, procs, result)
        rows = [json.loads(line) for line in result.read_text().splitlines()]
    cuda = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    print(f"torch {torch.__version__}, {args.device} ({cuda or platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores), chars {args.chars}, eps_A {args.eps_a:g}")
    print("| preset | stage | processes | threads each | batch | step s (median) | min | steps | speed-up vs 1 process |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    one = {(r["preset"], r["stage"]): r["median_s"] for r in rows if r["procs"] == 1}
    for r in rows:
        base = one.get((r["preset"], r["stage"]))
        speed = f"{base / r['median_s']:.2f}" if base else "-"
        print(f"| {r['preset']} | {r['stage']} | {r['procs']} | {r['threads']} | {r['batch']} | {r['median_s']:.4f} | "
              f"{r['min_s']:.4f} | {r['steps']} | {speed} |")


if __name__ == "__main__":
    main()
