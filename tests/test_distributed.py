"""Distributed design under ``torchrun`` (gloo on the CPU): the split of each step across processes,
the gradient average that keeps every process's parameters bit-identical, the checkpoint that
replays every process's draws, and the command line (rank 0 writes one run folder).

Two groups of checks, each paying the start of its processes once (module-scoped fixtures):
``two_workers`` runs the library on 2 processes started with ``torch.multiprocessing`` (the same
``RANK``/``WORLD_SIZE`` environment torchrun sets); ``torchrun_run`` runs the command line under
``python -m torch.distributed.run --standalone --nproc-per-node 2`` (conftest's
``torchrun_process``: started in the background as the session's collection ends).
"""

import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from a5ocr import models
from a5ocr.acquisition import Acquisition
from a5ocr.evaluation import evaluate
from a5ocr.glyphs import rasterize
from a5ocr.runs import load_run
from a5ocr.training import trainer as recipes
from a5ocr.training.design import DesignConfig, DesignError, run_design
from a5ocr.training.distributed import Distributed
from a5ocr.training.trainer import RobustGlyphs, Trainer, make_stage

TINY = dict(font="comic-neue", chars="AOo0", preset="tiny", eps_a=0.05, samples_per_char=5, device="cpu",
            certify_methods=("ibp",), stage1_steps=10, stage2_steps=10)
# The command line under torchrun: conftest.TORCHRUN_CLI (started in the background at collection).
VOLATILE = {"wall_seconds", "out"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_trainer(dist: Distributed, seed: int = 0) -> Trainer:
    torch.manual_seed(seed)
    g = rasterize("comic-neue", "AOo0", 16)
    return Trainer(models.build("tiny", 16, 4), RobustGlyphs(g.images, 0.5), Acquisition(16), copies=1, seed=seed,
                   device=torch.device("cpu"), dist=dist)


def _flat(t: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in (*t.model.parameters(), *t.glyphs.parameters())])


def _trainer_checks(dist: Distributed, tmp: Path) -> dict:
    """The gradient average on hand-made gradients, then 6 A5/PC steps with a checkpoint after 3
    and a fresh trainer restored from it for the last 3."""
    rank = dist.rank
    a, b, c = (torch.nn.Parameter(torch.zeros(n)) for n in (3, 2, 2))
    a.grad = torch.full((3,), rank + 1.0)  # 1 and 2: mean 1.5
    c.grad = torch.full((2,), 4.0) if rank == 1 else None  # on one process only: (0 + 4) / 2
    summed = dist.average_gradients([a, b, c], [float(rank), 0.5])
    stage = make_stage("pc", 6, 0.05, lr_glyphs=0.05, train_bounds="ibp")
    t = _tiny_trainer(dist)
    t.start_stage(stage)
    start = _flat(t)
    records = [t.train_step(stage) for _ in range(3)]
    t.checkpoint(tmp / "trainer.pt")  # every process calls it, rank 0 writes
    records += [t.train_step(stage) for _ in range(3)]
    again = _tiny_trainer(dist)
    again.restore(tmp / "trainer.pt", [stage])  # rank 0 wrote it before its next step's all-reduce
    for _ in range(3):
        again.train_step(stage)
    return {"a": a.grad, "b_none": b.grad is None, "c": c.grad, "summed": summed, "labels": t.labels(),
            "start": start, "after": _flat(t), "resumed": _flat(again), "records": records}


def _design_checks(tmp: Path) -> dict:
    """A 2-process design run whole (twice), and one interrupted in A5/PC then resumed."""
    full = run_design(DesignConfig(**TINY, out=str(tmp / "full")))
    again = run_design(DesignConfig(**TINY, out=str(tmp / "again")))
    real = recipes.Trainer.train_step

    def flaky(self, spec):
        if spec.recipe == "pc" and self.step == 5:  # the same step on both processes
            raise KeyboardInterrupt
        return real(self, spec)

    recipes.Trainer.train_step = flaky
    cut = DesignConfig(**TINY, out=str(tmp / "cut"), checkpoint_seconds=0.0)
    try:
        run_design(cut)
    except KeyboardInterrupt:
        pass
    finally:
        recipes.Trainer.train_step = real
    interrupted = sorted(p.name for p in (tmp / "cut").iterdir())
    resumed = run_design(cut, resume=True)
    printed = run_design(DesignConfig(**TINY, eps_print=0.02, out=str(tmp / "print")))
    return {"full": full, "again": again, "resumed": resumed, "interrupted_files": interrupted, "print": printed,
            "print_one": _one_process_evaluation(tmp / "print", 0.02) if printed is not None else None}


def _one_process_evaluation(folder: Path, eps_print: float = 0.0) -> dict:
    """The design's evaluation by ``evaluate`` in this process alone, of the saved classifier and glyphs."""
    run = load_run(folder)
    acq = Acquisition(run.resolution, run.acquisition, print_scale=run.print_scale)
    return evaluate(run.model, run.robust, run.chars, acq, eps_a=run.eps_a, samples_per_char=run.config["samples_per_char"],
                    seed=run.eval_seed, methods=tuple(run.config["certify_methods"]), eps_print=eps_print).summary()


def _same_figures(one: dict, part: dict) -> bool:
    """``evaluate``'s summary and a design summary's part (baseline, final, print) agree exactly."""
    return (one["clean_error"], one["certified_error"], one["per_char"]) == (
        part["clean_error"], part["certified_error_by_method"], part["per_char"])


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist = Distributed.from_env()
    dist.start(torch.device("cpu"))
    try:
        out = {"trainer": _trainer_checks(dist, Path(tmp)), "design": _design_checks(Path(tmp))}
    finally:
        dist.close()
    torch.save(out, Path(tmp) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp)), nprocs=2, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)], tmp


def test_rank_seeds_are_distinct_and_reproducible_and_one_process_keeps_its_seed():
    seeds = [Distributed(rank=r, world_size=2).rank_seed(0) for r in range(2)]
    assert seeds[0] != seeds[1] and seeds == [Distributed(rank=r, world_size=2).rank_seed(0) for r in range(2)]
    assert Distributed(rank=0, world_size=2).rank_seed(1) not in seeds
    assert Distributed().rank_seed(7) == 7 and not Distributed().active
    assert [Distributed(rank=r, world_size=2).shard(8) for r in range(2)] == [slice(0, 4), slice(4, 8)]
    with pytest.raises(ValueError):
        Distributed(rank=0, world_size=3).shard(8)


def test_gradients_are_averaged_and_a_gradient_nowhere_stays_none(two_workers):
    ranks, _ = two_workers
    for r in ranks:
        t = r["trainer"]
        assert torch.equal(t["a"], torch.full((3,), 1.5)) and torch.equal(t["c"], torch.full((2,), 2.0))
        assert t["b_none"] and t["summed"] == [1.0, 1.0]


def test_each_process_draws_its_share_and_the_parameters_stay_bit_identical(two_workers):
    ranks, _ = two_workers
    t0, t1 = ranks[0]["trainer"], ranks[1]["trainer"]
    assert t0["labels"].tolist() == [0, 1] and t1["labels"].tolist() == [2, 3]
    assert torch.equal(t0["start"], t1["start"])
    assert not torch.equal(t0["start"], t0["after"])  # it trained
    assert torch.equal(t0["after"], t1["after"])  # the same steps on both processes, to the bit
    # the figures are the whole batch's, the same on both
    assert t0["records"] == t1["records"]


def test_a_restored_checkpoint_replays_every_process_draws(two_workers):
    ranks, _ = two_workers
    for r in ranks:
        assert torch.equal(r["trainer"]["resumed"], r["trainer"]["after"])


def test_an_interrupted_two_process_design_resumes_to_the_uninterrupted_result(two_workers):
    ranks, tmp = two_workers
    d0, d1 = ranks[0]["design"], ranks[1]["design"]
    assert d1["full"] is None and d1["resumed"] is None  # rank 1 trains, rank 0 evaluates and reports
    assert "checkpoint.pt" in d0["interrupted_files"] and "summary.json" not in d0["interrupted_files"]
    assert d0["resumed"]["final"] == d0["full"]["final"] and d0["resumed"]["baseline"] == d0["full"]["baseline"]
    assert d0["full"]["distributed"]["world_size"] == 2 and d0["full"]["distributed"]["backend"] == "gloo"
    saved = torch.load(tmp / "full" / "checkpoint.pt", weights_only=True)
    assert saved["world_size"] == 2 and saved["generators"].shape[0] == 2


def test_a_process_count_that_does_not_divide_the_batch_is_refused_in_one_line(a5ocr_main, tmp_path, monkeypatch):
    # checked before any rendezvous: a lone process with WORLD_SIZE=3 answers at once
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    code, out, err = a5ocr_main("design", "--preset", "tiny", "--chars", "AOo0", "--device", "cpu", "--out", tmp_path / "r")
    assert code == 2 and "3 processes cannot share a step of 4 acquisitions" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def torchrun_run(torchrun_process):
    """(the run folder, the output) of a 2-process run of the command line (conftest.TORCHRUN_CLI),
    in a parent folder of its own: the session's, started in the background at collection."""
    code, run, log = torchrun_process
    assert code == 0, log[-3000:]
    return run, log


def test_two_torchrun_processes_write_one_run_folder_from_rank_0(torchrun_run):
    run, log = torchrun_run
    assert [p.name for p in run.parent.iterdir()] == ["run"]
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temporary file left
    for name in ("config.json", "checkpoint.pt", "classifier.safetensors", "glyphs.safetensors", "summary.json"):
        assert (run / name).is_file(), name
    assert log.count("run folder:") == 1 and log.count("start  stage 1") == 1  # rank 0 alone prints
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["stage"] == "pc"][-1] == 60  # one writer: no duplicated records
    assert len(metrics) == len({(m["stage"], m["step"]) for m in metrics})
    assert json.loads((run / "config.json").read_text())["distributed"]["world_size"] == 2


def test_the_shared_evaluation_is_the_one_process_evaluation_of_the_saved_design(torchrun_run):
    folder, log = torchrun_run
    assert "start  evaluate final (process 0's part)  (50)" in log  # each process certified half
    assert _same_figures(_one_process_evaluation(folder), json.loads((folder / "summary.json").read_text())["final"])


def test_the_shared_evaluation_of_the_print_threat_is_the_one_process_one(two_workers):
    ranks, _ = two_workers
    d0 = ranks[0]["design"]
    assert d0["print"]["eps_print"] == 0.02 and _same_figures(d0["print_one"], d0["print"]["final"]["print"])


def _stable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in VOLATILE}


def test_the_same_seed_and_world_size_give_the_same_summary(two_workers):
    ranks, _ = two_workers
    d0 = ranks[0]["design"]
    assert _stable(d0["full"]) == _stable(d0["again"])


def test_two_processes_are_within_sampling_noise_of_one(torchrun_run, tmp_path):
    """The 2-process run draws other acquisitions than the 1-process run (each rank its own
    stream), so its classifier and glyphs differ; both are scored on the same n = 100 evaluation
    acquisitions. Tolerance: 3 standard deviations of the difference of two error rates of n
    samples at their mean rate p, sqrt(2 p (1 - p) / n), plus 2/n for rates near 0 (a chance-level
    or diverged run, 75% error here, is far outside it)."""
    folder, _ = torchrun_run
    two = json.loads((folder / "summary.json").read_text())
    cfg = DesignConfig(font="comic-neue", chars="AOo0", preset="tiny", eps_a=0.02, samples_per_char=25, device="cpu",
                       stage1_steps=150, stage2_steps=60, warmup=5, ramp=10, out=str(tmp_path / "one"))
    one = run_design(cfg)
    n = one["samples"]
    assert n == two["samples"] == 100
    for part in ("baseline", "final"):
        for key in ("clean_error", "certified_error"):
            p = (one[part][key] + two[part][key]) / 2
            tol = 3 * math.sqrt(2 * p * (1 - p) / n) + 2 / n
            assert abs(one[part][key] - two[part][key]) <= tol, (part, key, one[part][key], two[part][key], tol)
        assert two[part]["certified_error"] < 0.5  # it learned
    # and a 1-process resume of the 2-process folder is refused before anything is rewritten
    with pytest.raises(DesignError, match="trained by 2 processes, this run has 1: resume it with torchrun --nproc-per-node 2"):
        run_design(DesignConfig(**{**cfg.__dict__, "out": str(folder)}), resume=True)
    assert json.loads((folder / "config.json").read_text())["distributed"]["world_size"] == 2
