"""Benchmark of the bound engine on the paper's fonts classifier (not a test; a script).

For each resolution (32, 64, 128), batch 62, labels 0..61 (61 margin specs per sample), it
measures forward+backward of:

* plain: loss = sum of logits, backward to the weights and the input;
* ibp: ``margin_lower_bounds(..., "ibp")`` + ``worst_case_cross_entropy``, backward;
* crown-ibp: the same with CROWN-IBP.

Each measurement runs in a fresh spawned process (1 warm-up + repeats, median wall time);
peak memory is that process's ru_maxrss (CPU: whole-process peak RSS, torch included) or
torch.cuda.max_memory_allocated (CUDA).

    PYTHONPATH=. python benchmarks/bounds.py [--max-res 64] [--repeats 5] [--device cuda]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time

import torch

from a5ocr import bounds
from a5ocr.models import paper_net  # the paper's fonts classifier, as the project builds it

KINDS = ("plain", "ibp", "crown-ibp")


def _measure(kind: str, res: int, batch: int, repeats: int, device: str, threads: int, eps: float, q) -> None:
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
        if i:  # the first run is the warm-up
            times.append(time.perf_counter() - t)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    q.put({"kind": kind, "res": res, "time": statistics.median(times), "min": min(times), "peak_gib": peak,
           "base_gib": base_rss / 2**20, "repeats": repeats})


def measure(kind: str, res: int, batch: int, repeats: int, device: str, threads: int, eps: float) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(kind, res, batch, repeats, device, threads, eps, q))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-res", type=int, default=128, choices=(32, 64, 128))
    ap.add_argument("--res", default="32,64,128", help="resolutions to run (comma list; capped by --max-res)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up (crown-ibp at 128: 2)")
    ap.add_argument("--fast-repeats", type=int, default=20, help="timed repeats of plain and ibp (cheap, noisy)")
    ap.add_argument("--batch", type=int, default=62)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--kinds", default=",".join(KINDS))
    args = ap.parse_args()

    print(f"# machine: {machine(args.device)}")
    print(f"# date: {_dt.date.today().isoformat()}; batch {args.batch}, 61 margin specs, eps {args.eps:.4f}, device {args.device}")
    print(f"# load average at start: {_loadavg()}")
    rows = []
    for res in sorted(int(v) for v in args.res.split(",")):
        if res > args.max_res:
            break
        out = {}
        for kind in args.kinds.split(","):
            if kind in ("plain", "ibp"):
                reps = args.fast_repeats
            else:
                reps = args.repeats if res < 128 else min(args.repeats, 2)
            out[kind] = measure(kind, res, args.batch, reps, args.device, args.threads, args.eps)
            r = out[kind]
            print(f"  measured {kind:10s} {res:4d}px: median {r['time']:8.3f} s  min {r['min']:8.3f} s  "
                  f"peak {r['peak_gib']:.2f} GiB  (load {_loadavg()})", flush=True)
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
