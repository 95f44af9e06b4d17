"""Peak memory and CPU time of robust_loss (CROWN-IBP on the k hardest margins) vs IBP and plain.

    python benchmarks/crown_memory.py RES KIND BUDGET REPEATS [ckpt]   # KIND: plain, ibp or kN; BUDGET: max_memory_gib (0: the default)

``ckpt``: the final CROWN pass in checkpointed chunks recomputed by the backward pass (the path
before ``bounds.chunked``; ``checkpoint_chunks=True``); default: chunks differentiated at once.

One configuration per process (peak RSS is the process's ru_maxrss), the paper net, batch 124,
eps 8/255, 1 torch thread; prints one JSON line: the median process CPU time per
forward+backward (user + system, less sensitive to other jobs than wall time) and the peak RSS.
"""
import sys, resource, torch, time, statistics, json
from a5ocr import bounds
from a5ocr.models import paper_net
res, kind, gib, reps = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
ckpt = sys.argv[5:] == ["ckpt"]
torch.set_num_threads(1); torch.manual_seed(0)
net = paper_net(res); B = 124
x0 = torch.rand(B, 3, res, res); labels = torch.arange(B) % 62; eps = 8/255
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
ts, ws = [], []
for i in range(reps + 1):
    net.zero_grad(set_to_none=True)
    x = x0.clone().requires_grad_(True)
    xl, xu = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    c0, w0 = cpu(), time.perf_counter()
    if kind == "plain":
        loss = net(x).sum()
    elif kind == "ibp":
        loss = bounds.robust_loss(net, xl, xu, labels, "ibp")
    else:
        loss = bounds.robust_loss(net, xl, xu, labels, "crown-ibp", k=int(kind[1:]), max_memory_gib=gib or None,
                                  checkpoint_chunks=ckpt)
    loss.backward()
    if i: ts.append(cpu() - c0); ws.append(time.perf_counter() - w0)
print(json.dumps({"res": res, "kind": kind, "gib": gib, "ckpt": ckpt, "cpu_s": statistics.median(ts), "wall_s": statistics.median(ws),
                  "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}), flush=True)
