"""Benchmark of the bound engine on the paper's fonts classifier (not a test; a script).

For each resolution (32, 64, 128), batch 62, labels 0..61 (61 margin specs per sample), it
measures forward+backward of:

* plain: loss = sum of logits, backward to the weights and the input;
* ibp: ``margin_lower_bounds(..., "ibp")`` + ``worst_case_cross_entropy``, backward;
* crown-ibp: the same with CROWN-IBP;
* rl-ibp, rl-kN: ``robust_loss`` (IBP; CROWN-IBP on the N hardest margins by IBP, the others
  IBP; rl-k61 = all 61 margins), backward.

Each measurement runs in a fresh spawned process (1 warm-up + repeats, median wall time);
peak memory is that process's ru_maxrss (CPU: whole-process peak RSS, torch included) or
torch.cuda.max_memory_allocated (CUDA).

    PYTHONPATH=. python benchmarks/bounds.py [--max-res 64] [--repeats 5] [--device cuda]
    PYTHONPATH=. python benchmarks/bounds.py --batch 124 --res 32,64 --kinds plain,ibp,rl-ibp,rl-k61,rl-k16,rl-k8,rl-k4

``--crown``: instead, full CROWN and alpha-CROWN certification bounds (no gradients) on the paper
net at ``--crown-res`` (32) with ``--crown-batch`` (8) samples, intermediate bounds by the window
(patches) path and by the dense reference path, measured alternately in this one process
(median of ``--repeats``), with the largest difference between the two paths' bounds.

``--tightness RUN_DIR``: instead of timing, the tightness of ``robust_margins`` (IBP, full
CROWN-IBP, CROWN-IBP on the k hardest margins) on the run's classifier and robust glyphs over
fresh acquisitions: mean worst-case cross-entropy and certified fraction (all margins > 0).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time

import torch

from a5ocr import bounds
from a5ocr.evaluation import acquisitions
from a5ocr.models import paper_net  # the paper's fonts classifier, as the project builds it
from a5ocr.runs import load_run

KINDS = ("plain", "ibp", "crown-ibp")


def robust_kind(kind: str) -> tuple[str, int | None]:
    """'rl-ibp' -> ("ibp", None); 'rl-kN' -> ("crown-ibp", N) (N >= 61: all margins)."""
    rest = kind[3:]
    if rest == "ibp":
        return "ibp", None
    if rest.startswith("k") and rest[1:].isdigit():
        return "crown-ibp", int(rest[1:])
    raise ValueError(f"unknown benchmark kind {kind!r}")


def _measure(kind: str, res: int, batch: int, repeats: int, device: str, threads: int, eps: float, max_step_s: float,
             q) -> None:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    net = paper_net(res).to(dev)
    x0 = torch.rand(batch, 3, res, res, device=dev)
    labels = torch.arange(batch, device=dev) % 62

    def step():
        net.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_(True)
        if kind == "plain":
            loss = net(x).sum()
        elif kind.startswith("rl-"):
            method, k = robust_kind(kind)
            xl, xu = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
            loss = bounds.robust_loss(net, xl, xu, labels, method, k=k)
        else:
            xl, xu = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
            m = bounds.margin_lower_bounds(net, xl, xu, labels, method=kind)
            loss = bounds.worst_case_cross_entropy(m)
        loss.backward()
        assert x.grad is not None and net[1].weight.grad is not None

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(repeats + 1):
        sync()
        t = time.perf_counter()
        step()
        sync()
        dt = time.perf_counter() - t
        if i:  # the first run is the warm-up
            times.append(dt)
        elif dt > max_step_s:  # too slow for this machine: report the warm-up step alone
            times.append(dt)
            repeats = 0
            break
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    q.put({"kind": kind, "res": res, "time": statistics.median(times), "min": min(times), "peak_gib": peak,
           "base_gib": base_rss / 2**20, "repeats": repeats})


def measure(kind: str, res: int, batch: int, repeats: int, device: str, threads: int, eps: float,
            max_step_s: float = float("inf")) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(kind, res, batch, repeats, device, threads, eps, max_step_s, q))
    p.start()
    p.join()
    if p.exitcode != 0:
        nan = float("nan")
        return {"kind": kind, "res": res, "time": nan, "min": nan, "peak_gib": nan, "repeats": 0, "error": p.exitcode}
    return q.get()


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def machine(device: str) -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    s = f"{platform.platform()}; CPU {cpu} ({os.cpu_count()} logical cores); torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.startswith("cuda") and torch.cuda.is_available():
        s += f"; GPU {torch.cuda.get_device_name(0)}"
    return s


def tightness(run_dir: str, samples_per_char: int, seed: int, ks: list[int], batch: int, eps: float | None) -> None:
    """Mean worst-case CE and certified fraction of IBP, full and pruned CROWN-IBP margins
    (``robust_margins``, f=None) of a run's classifier on fresh acquisitions of its robust glyphs."""
    run = load_run(run_dir)
    model = run.model.float().eval()
    eps = run.eps_a if eps is None else eps
    acq = run.camera()
    variants = [("ibp", "ibp", None), ("crown-ibp (61)", "crown-ibp", None)] + [
        (f"crown-ibp k={k}", "crown-ibp", k) for k in ks]
    acc = {name: [] for name, _, _ in variants}
    n = 0
    clean_ok = 0
    with torch.no_grad():
        for x, labels in acquisitions(run.robust, acq, samples_per_char, seed, chunk=batch):
            n += labels.numel()
            clean_ok += int((model(x).argmax(1) == labels).sum())
            xl, xu = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
            for name, method, k in variants:
                m = bounds.robust_margins(model, xl, xu, labels, method, k=k)
                wce = bounds.worst_case_cross_entropy(m, labels, reduction="none")
                cert = (m > 0).scatter(1, labels.view(-1, 1), True).all(1)
                acc[name].append((wce, cert))
    print(f"# tightness: run {run_dir} ({len(run.chars)} classes, {run.resolution}px, arch of the run), eps {eps}, "
          f"{n} fresh acquisitions (seed {seed}), clean error {100 * (1 - clean_ok / n):.2f}%")
    res = {name: (torch.cat([w for w, _ in v]), torch.cat([c for _, c in v])) for name, v in acc.items()}
    w_ibp, w_full = res["ibp"][0].mean().item(), res["crown-ibp (61)"][0].mean().item()
    c_full = res["crown-ibp (61)"][1]
    print("| margins | mean worst-case CE | certified | share of the CE gain of full CROWN-IBP over IBP kept | "
          "certificate = full's |")
    print("|---|---:|---:|---:|---:|")
    for name, (w, c) in res.items():
        gain = (w_ibp - w.mean().item()) / (w_ibp - w_full) if w_ibp != w_full else float("nan")
        print(f"| {name} | {w.mean().item():.4f} | {100 * c.float().mean().item():.2f}% | {100 * gain:.1f}% | "
              f"{100 * (c == c_full).float().mean().item():.2f}% |")


def crown_paths(res: int, batch: int, repeats: int, eps: float, alpha_steps: int) -> None:
    """Full CROWN / alpha-CROWN margin bounds, window (patches) vs dense intermediate path, alternately."""
    torch.manual_seed(0)
    net = paper_net(res).eval()
    x = torch.rand(batch, 3, res, res)
    labels = torch.arange(batch) % 62
    xl, xu = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    print(f"# full CROWN paths: paper net {res}px, batch {batch}, 61 margin specs, eps {eps:.4f}, no gradients, "
          f"alpha-crown {alpha_steps} steps; load average at start: {_loadavg()}")
    rows = []
    with torch.no_grad():
        bounds.margin_lower_bounds(net, xl[:1], xu[:1], labels[:1], "crown")  # warm-up (small)
        for method in ("crown", "alpha-crown"):
            times = {True: [], False: []}
            out = {}
            for _ in range(repeats):
                for patches in (True, False):
                    t = time.perf_counter()
                    out[patches] = bounds.margin_lower_bounds(net, xl, xu, labels, method, alpha_steps=alpha_steps,
                                                              crown_patches=patches)
                    times[patches].append(time.perf_counter() - t)
            diff = (out[True] - out[False]).abs().max().item()
            med = {p: statistics.median(v) for p, v in times.items()}
            print(f"  measured {method}: windows {med[True]:.2f} s, dense {med[False]:.2f} s, max |diff| {diff:.2e} "
                  f"(load {_loadavg()})", flush=True)
            rows.append((method, med, diff))
    print()
    print("| res | batch | method | intermediate path | s (median) | x dense | max abs diff of the bounds |")
    print("|---:|---:|---|---|---:|---:|---:|")
    for method, med, diff in rows:
        for patches, name in ((True, "windows (patches)"), (False, "dense (reference)")):
            print(f"| {res} | {batch} | {method} | {name} | {med[patches]:.2f} | {med[patches] / med[False]:.2f} | "
                  f"{diff if patches else 0.0:.1e} |")
    print(f"# repeats {repeats} per path, alternating; load average at end: {_loadavg()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-res", type=int, default=128, choices=(32, 64, 128))
    ap.add_argument("--res", default="32,64,128", help="resolutions to run (comma list; capped by --max-res)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up (crown-ibp at 128: 2)")
    ap.add_argument("--fast-repeats", type=int, default=20, help="timed repeats of plain and ibp (cheap, noisy)")
    ap.add_argument("--max-step-s", type=float, default=float("inf"),
                    help="a row whose warm-up step takes longer reports that step alone (repeats 0)")
    ap.add_argument("--batch", type=int, default=62)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--tightness", metavar="RUN_DIR", help="measure tightness on this design run instead of timing")
    ap.add_argument("--samples-per-char", type=int, default=20, help="--tightness: acquisitions per glyph")
    ap.add_argument("--seed", type=int, default=424_242, help="--tightness: acquisition seed")
    ap.add_argument("--ks", default="16,8,4", help="--tightness: pruned k values")
    ap.add_argument("--crown", action="store_true", help="time full CROWN / alpha-CROWN, window vs dense path")
    ap.add_argument("--crown-res", type=int, default=32, choices=(32, 64, 128), help="--crown: resolution")
    ap.add_argument("--crown-batch", type=int, default=8, help="--crown: samples")
    ap.add_argument("--alpha-steps", type=int, default=20, help="--crown: alpha-CROWN steps")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.crown:
        print(f"# machine: {machine('cpu')}; date {_dt.date.today().isoformat()}")
        crown_paths(args.crown_res, args.crown_batch, args.repeats, args.eps, args.alpha_steps)
        return
    if args.tightness:
        print(f"# machine: {machine('cpu')}; date {_dt.date.today().isoformat()}")
        eps = None if "--eps" not in sys.argv else args.eps
        tightness(args.tightness, args.samples_per_char, args.seed, [int(k) for k in args.ks.split(",")],
                  args.batch, eps)
        return
    print(f"# machine: {machine(args.device)}")
    print(f"# date: {_dt.date.today().isoformat()}; batch {args.batch}, 61 margin specs, eps {args.eps:.4f}, device {args.device}")
    print(f"# load average at start: {_loadavg()}")
    rows = []
    for res in sorted(int(v) for v in args.res.split(",")):
        if res > args.max_res:
            break
        out = {}
        for kind in args.kinds.split(","):
            if kind in ("plain", "ibp", "rl-ibp"):
                reps = args.fast_repeats
            else:
                reps = args.repeats if res < 128 else min(args.repeats, 2)
            out[kind] = measure(kind, res, args.batch, reps, args.device, args.threads, args.eps, args.max_step_s)
            r = out[kind]
            print(f"  measured {kind:10s} {res:4d}px: median {r['time']:8.3f} s  min {r['min']:8.3f} s  "
                  f"peak {r['peak_gib']:.2f} GiB  repeats {r['repeats']}  (load {_loadavg()})", flush=True)
        rows.append((res, out))
    mem = "peak GPU mem (GiB)" if args.device.startswith("cuda") else "peak RSS (GiB)"
    print()
    print(f"| res | method | fwd+bwd s (median) | min | repeats | x plain (median) | x plain (min) | {mem} |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for res, out in rows:
        plain = out.get("plain", {"time": float("nan"), "min": float("nan")})
        for kind, r in out.items():
            print(f"| {res} | {kind} | {r['time']:.3f} | {r['min']:.3f} | {r['repeats']} | "
                  f"{r['time'] / plain['time']:.2f} | {r['min'] / plain['min']:.2f} | {r['peak_gib']:.2f} |")
    print(f"# load average at end: {_loadavg()}")


if __name__ == "__main__":
    main()
