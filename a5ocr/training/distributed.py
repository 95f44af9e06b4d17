"""Training on several processes with ``torchrun`` (``torch.distributed``).

``torchrun --nproc-per-node N -m a5ocr.cli design ...`` starts N processes with the
environment variables ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous address);
``Distributed.from_env()`` reads them. Without them (or with ``WORLD_SIZE=1``) it is the single
process, every method a no-op, and nothing of a run changes.

With N > 1 processes (``active``), ``start(device)`` joins the process group (gloo on the CPU,
NCCL on CUDA, each process on GPU ``LOCAL_RANK``) and a training step is split across them:

* each process draws ``1/N`` of the step's acquisitions (``shard``) from its own generator,
  seeded with ``rank_seed(seed)`` (a ``numpy.random.SeedSequence`` of (seed, rank): streams
  that do not overlap, the same for the same seed and world size);
* after the backward pass, ``average_gradients`` sums the gradients of every trained parameter
  (and the step's metrics) over the processes in one all-reduce and divides by N: every process
  then holds the same averaged gradient and takes the same optimiser step, so the classifier and
  the glyph parameters stay bit-identical on every process (``broadcast_`` makes them equal at
  the start);
* ``gather`` collects every process's generator state for the checkpoint, which only rank 0
  (``is_main``) writes, like every other file and every progress line;
* the evaluation at the end of a design is shared the same way: every process draws the same
  acquisitions, certifies its ``part`` of each chunk, and ``gather_columns`` brings the
  per-sample outcomes together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable, Iterable, TypeVar

import numpy as np
import torch
import torch.distributed as tdist

from a5ocr.errors import A5Error

T = TypeVar("T")
# How long a process waits for the others at a collective before it fails (torch's default, 30
# min for gloo, 10 for NCCL): long enough for rank 0's checkpoint writes on a slow disk.
TIMEOUT = timedelta(minutes=30)


def launched_rank() -> int:
    """This process's rank under ``torchrun`` (``RANK``; 0 without it): for the command line,
    which prints on rank 0 only, before any process group exists."""
    return int(os.environ.get("RANK", "0") or 0)


# The commands that share their work over torchrun's processes; every other one would run N
# copies that all write the same files.
DISTRIBUTED_COMMANDS = ("design",)


def refuse_distributed(command: str | None) -> None:
    """Stop ``a5ocr <command>`` started by ``torchrun`` on more than one process (``WORLD_SIZE`` > 1)
    unless it is one of ``DISTRIBUTED_COMMANDS``: an ``A5Error`` (one line, exit 2) before
    anything is written. A single process (no ``WORLD_SIZE``, or 1) passes."""
    if command is None or command in DISTRIBUTED_COMMANDS:
        return
    world = Distributed.from_env().world_size
    if world > 1:
        raise A5Error(f"a5ocr {command} does not run on several processes (WORLD_SIZE {world}): under torchrun "
                      f"only {' and '.join(f'a5ocr {c}' for c in DISTRIBUTED_COMMANDS)} does; start it as one process")


@dataclass
class Distributed:
    """The processes of one run: this one's ``rank`` among ``world_size``, its ``local_rank``
    (its GPU on this machine); after ``start``, the ``backend`` and the ``device`` collectives use."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = field(default=False, init=False, repr=False)  # start() made the process group

    @classmethod
    def from_env(cls, error: type[A5Error] = A5Error) -> "Distributed":
        """The processes ``torchrun`` started (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or the
        single process when they are not set; ``error`` (one line) on values that make no sense."""
        if "WORLD_SIZE" not in os.environ:
            return cls()
        try:
            world = int(os.environ["WORLD_SIZE"])
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise error("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise error(f"bad torchrun environment: RANK {rank}, WORLD_SIZE {world}, LOCAL_RANK {local}")
        return cls(rank=rank, world_size=world, local_rank=local)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def record(self, seed: int) -> dict:
        """What ``config.json`` and ``summary.json`` say of the processes (active runs only)."""
        return {"world_size": self.world_size, "backend": self.backend,
                "rank_seeds": [self.with_rank(r).rank_seed(seed) for r in range(self.world_size)]}

    def resume_problem(self, saved: int) -> str | None:
        """What is wrong with resuming here a run trained by ``saved`` processes (its draws replay
        on as many only), in words; None when the numbers match."""
        if saved == self.world_size:
            return None
        how = "without torchrun" if saved == 1 else f"with torchrun --nproc-per-node {saved}"
        return (f"trained by {saved} process{'es' if saved > 1 else ''}, this run has {self.world_size}: "
                f"resume it {how}")

    def with_rank(self, rank: int) -> "Distributed":
        return Distributed(rank=rank, world_size=self.world_size, local_rank=self.local_rank, backend=self.backend,
                           device=self.device)

    # -- the process group --------------------------------------------------------------------
    def start(self, device: torch.device) -> torch.device:
        """Join the process group for a run on ``device`` (gloo for the CPU, NCCL for CUDA); returns
        the device this process computes on (CUDA: GPU ``LOCAL_RANK``). Single process: ``device``."""
        if not self.active:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        self.device = device
        if tdist.is_initialized():  # the caller's group (a notebook, a test): used, and left to it
            self.backend = tdist.get_backend()
        else:
            tdist.init_process_group(self.backend, rank=self.rank, world_size=self.world_size, timeout=TIMEOUT,
                                     **({"device_id": device} if device.type == "cuda" else {}))
            self.owns_group = True
        return device

    def close(self) -> None:
        """Leave the process group ``start`` joined (not one the caller had made)."""
        if self.owns_group and tdist.is_initialized():
            tdist.destroy_process_group()
            self.owns_group = False

    # -- the split of a batch -----------------------------------------------------------------
    def shard(self, n: int) -> slice:
        """This process's part of ``n`` items (``n`` divisible by ``world_size``): a contiguous slice."""
        if n % self.world_size:
            raise ValueError(f"{n} items do not split across {self.world_size} processes")
        size = n // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)

    def part(self, n: int) -> slice:
        """This process's contiguous part of ``n`` items, any ``n`` (the parts differ by one item at most)."""
        return slice(n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size)

    def rank_seed(self, seed: int) -> int:
        """The seed of this process's generator: ``seed`` itself for a single process (the run is
        what it always was); else a 64-bit draw of ``SeedSequence([seed, rank])`` (distinct,
        non-overlapping streams per rank, reproducible from the seed)."""
        if not self.active:
            return seed
        return int(np.random.SeedSequence([seed % 2**64, self.rank]).generate_state(1, np.uint64)[0])

    # -- collectives (no-ops for a single process) -------------------------------------------------
    def broadcast_(self, tensors: Iterable[torch.Tensor]) -> None:
        """Overwrite ``tensors`` (in place) with rank 0's."""
        if self.active:
            for t in tensors:
                tdist.broadcast(t.data, src=0)

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every process (a decision all must take together: a checkpoint)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        tdist.broadcast(t, src=0)
        return bool(t.item() > 0)

    def average_gradients(self, params: list[torch.nn.Parameter], scalars: list[float]) -> list[float]:
        """Average the ``.grad`` of ``params`` over the processes, in place, and sum ``scalars``
        (the step's metrics); returns the summed scalars. One all-reduce of one flat buffer.

        Written out rather than through ``DistributedDataParallel``: DDP synchronises the gradients
        of a module's own ``forward`` call, but a step here differentiates through the bound
        propagation (``a5ocr.bounds`` reads the classifier's layers one by one) and through the
        glyph change z, which is no module's forward: an explicit all-reduce covers every path.
        A parameter without a gradient on any process keeps none (Adam must skip it, not see 0).
        """
        if not self.active:
            return list(scalars)
        dtype = params[0].dtype if params else torch.float32
        grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
        present = [1.0 if p.grad is not None else 0.0 for p in params]
        flat = torch.cat([*(g.to(self.device, dtype) for g in grads),
                          torch.tensor([*present, *scalars], dtype=dtype, device=self.device)])
        # gloo's and NCCL's ring all-reduce add each element once and copy the sum: every process gets the
        # same bits (tests/test_distributed.py checks the parameters stay bit-identical)
        tdist.all_reduce(flat)
        total = sum(g.numel() for g in grads)
        offset = 0
        for p, anywhere in zip(params, flat[total:total + len(params)].tolist()):
            if anywhere > 0:
                p.grad = (flat[offset:offset + p.numel()] / self.world_size).view_as(p).to(p.device, p.dtype)
            offset += p.numel()
        return flat[total + len(params):].tolist()

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every process's ``t`` (the same shape and dtype on all), in rank order, on the CPU."""
        if not self.active:
            return [t.cpu()]
        local = t.to(self.device)
        out = [torch.empty_like(local) for _ in range(self.world_size)]
        tdist.all_gather(out, local)
        return [o.cpu() for o in out]

    def gather_columns(self, t: torch.Tensor) -> torch.Tensor:
        """Every process's ``t`` [r, n_i] (the same r and dtype, any n_i) side by side in rank
        order: [r, sum of n_i], on the CPU (padded to the longest for the all-gather, then cut)."""
        if not self.active:
            return t.cpu()
        local = t.to(self.device)
        sizes = [int(n.item()) for n in self.gather(torch.tensor([local.shape[1]], device=self.device))]
        padded = torch.zeros(local.shape[0], max(sizes), dtype=local.dtype, device=self.device)
        padded[:, :local.shape[1]] = local
        return torch.cat([g[:, :n] for g, n in zip(self.gather(padded), sizes)], dim=1)

    def main_first(self, fn: Callable[[], T], error: type[A5Error]) -> T | None:
        """``fn()`` on rank 0 only, the others waiting for it; returns its value on rank 0 (None on
        the others). When it raises on rank 0, the others raise ``error`` too (one line), so that
        no process is left waiting at the next collective."""
        if not self.active:
            return fn()
        ok, value, failure = 1.0, None, None
        if self.is_main:
            try:
                value = fn()
            except BaseException as err:  # noqa: BLE001 - re-raised below, after the others are told
                ok, failure = 0.0, err
        t = torch.tensor([ok], device=self.device)
        tdist.broadcast(t, src=0)
        if failure is not None:
            raise failure
        if t.item() == 0:
            raise error("stopped: process 0 of the run failed (its error is above)")
        return value
