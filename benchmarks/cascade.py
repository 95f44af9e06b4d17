"""The certification cascade of an evaluation, before and after the per-margin saving (a script).

On a design run folder: the evaluation's own acquisitions (``--samples-per-char`` per glyph with
the run's evaluation seed, robust glyphs or ``--original``), eps_A of the run, certified with
``--method`` (CROWN-IBP) after IBP, in two ways, alternately, ``--repeats`` times after one warm-up on 64 samples:

* ``per-sample`` (before): IBP on every sample, then ``method`` on *every margin* of each correct
  sample IBP left uncertified (``bounds.certify``);
* ``per-margin`` (after, what ``certify_cascade`` does now): the same samples, ``method`` only on
  the margins IBP left unproven (``bounds.certify(ibp_first=True)``).

Prints the medians, their ratio, and the certified counts (the per-margin cascade certifies a
superset). IBP time is included in both (it is the same pass).

    PYTHONPATH=. python benchmarks/cascade.py RUN [--original] [--samples-per-char 100] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from a5ocr.evaluation.certify import certify_batch
from a5ocr.evaluation.protocol import acquisitions
from a5ocr.runs import load_run


def _samples(run, original: bool, per_char: int) -> tuple[torch.Tensor, torch.Tensor]:
    glyphs = run.original if original else run.robust
    acq = run.camera()
    xs, ys = zip(*acquisitions(glyphs, acq, per_char, run.eval_seed))
    return torch.cat(xs), torch.cat(ys)


def _cascade(model, x, y, eps: float, method: str, per_margin: bool) -> tuple[float, float, int, int]:
    """(wall seconds, process CPU seconds, samples IBP certifies, samples the cascade certifies)."""
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    ibp = certify_batch(model, x, y, eps, "ibp") & correct
    todo = torch.nonzero(correct & ~ibp).flatten()
    cert = ibp.clone()
    if todo.numel():
        cert[todo] = certify_batch(model, x[todo], y[todo], eps, method, ibp_first=per_margin)
    return time.perf_counter() - t0, time.process_time() - c0, int(ibp.sum()), int(cert.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--original", action="store_true")
    ap.add_argument("--samples-per-char", type=int, default=100)
    ap.add_argument("--method", default="crown-ibp")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = load_run(args.run)
    model = run.model.eval()
    x, y = _samples(run, args.original, args.samples_per_char)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.2f}; {x.shape[0]} samples, eps {run.eps_a}, {'original' if args.original else 'robust'} glyphs")
    times = {"per-sample": [], "per-margin": []}
    cpu = {"per-sample": [], "per-margin": []}
    counts = {}
    for name in times:  # warm-up (first-call costs)
        _cascade(model, x[:64], y[:64], run.eps_a, args.method, name == "per-margin")
    for _ in range(args.repeats):
        for name in times:
            s, c, n_ibp, n_cert = _cascade(model, x, y, run.eps_a, args.method, name == "per-margin")
            times[name].append(s)
            cpu[name].append(c)
            counts[name] = (n_ibp, n_cert)
    for name, ts in times.items():
        n_ibp, n_cert = counts[name]
        print(f"{name:10s} median {statistics.median(ts):8.2f} s  min {min(ts):8.2f} s  "
              f"CPU median {statistics.median(cpu[name]):8.2f} s  "
              f"certified: IBP {n_ibp}, cascade {n_cert} of {x.shape[0]}")
    ratio = statistics.median(times["per-sample"]) / statistics.median(times["per-margin"])
    ratio_cpu = statistics.median(cpu["per-sample"]) / statistics.median(cpu["per-margin"])
    print(f"speed-up (median per-sample / median per-margin): {ratio:.2f}x wall, {ratio_cpu:.2f}x CPU time; "
          f"load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
