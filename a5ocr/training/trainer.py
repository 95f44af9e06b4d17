"""Training recipes: ``vanilla``, ``crown-ibp``, A5/P (``p``), A5/PC (``pc``), A5/R (``r``) and
A5/RC (``rc``).

All are one loop (``Trainer.run_stage``) that differs only in what it trains and in its eps
schedule:

=========  ==========================  ===============  =========================
recipe     trains                      attack radius    loss
=========  ==========================  ===============  =========================
vanilla    classifier                  0                clean cross-entropy
crown-ibp  classifier                  ramp to eps_A    f*CE + (1-f)*worst-case CE
p          glyph change dw             eps_A            worst-case CE (C frozen)
pc         dw and classifier           eps_A            worst-case CE
r          robustifier R (on x)        eps_A            worst-case CE (C frozen)
rc         R and classifier            eps_A            worst-case CE
=========  ==========================  ===============  =========================

Each step draws a batch: by default fresh acquisitions of every glyph (``copies`` per glyph);
any other source (an image dataset) through ``Trainer(batch=...)``. The glyph change is the
paper's sigmoid parameterisation dw = eps_D (2 sigmoid(z) - 1), w_rob = clamp(w + dw, 0, 1)
(``a5ocr.training.losses.defended``); a stage with ``eps_print`` > 0 (A5/P, A5/PC) bounds the
worst case over the printed glyph too (||dw_A||_inf <= eps_print through each acquisition's camera,
scaled with the eps schedule: eps_print * eps / eps_A); A5/R and A5/RC put the acquired image through a robustifier
(``a5ocr.robustify.Robustifier``) whose output z = clamp(x + dx_D, 0, 1) the classifier reads.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from a5ocr.acquisition import Acquisition
from a5ocr.errors import CheckpointError, CollapseError
from a5ocr.runio import atomic_path
from a5ocr.training.distributed import Distributed
from a5ocr.training.interrupt import StopRequest, TrainingStopped, stop_on_signals
from a5ocr.training.losses import PrintBox, a5_loss
from a5ocr.training.parameterisation import Parameterisation, signed_distance
from a5ocr.training.schedule import EpsSchedule

RECIPES = ("vanilla", "crown-ibp", "p", "pc", "r", "rc")


class RobustGlyphs(nn.Module):
    """The designed glyphs w + dw with ||dw||_inf <= eps_D, kept in [0, 1].

    ``base``: [K, N, N] original ink (N = S*R, the print grid); ``z``: the free parameters of
    ``parameterisation`` (the paper's: [K, N, N]; coarse: [K, N/f, N/f]; 0 = no change).
    ``forward()`` -> [K, N, N]; ``penalty()`` the parameterisation's smoothness term of the loss.
    With ``ink="binary"`` the forward pass rounds every pixel to 0 or 1 and passes gradients
    straight through (a design any printer reproduces exactly).
    """

    def __init__(self, base: torch.Tensor, eps_d: float, ink: str = "gray", parameterisation: Parameterisation | None = None):
        super().__init__()
        if ink not in ("gray", "binary"):
            raise ValueError(f"unknown ink {ink!r} (gray or binary)")
        self.parameterisation = parameterisation or Parameterisation()
        self.register_buffer("base", base.detach().clone())
        # the outline's signed distance of the source glyphs, computed once (not in checkpoints: it follows from base)
        level = signed_distance(self.base) if self.parameterisation.kind == "outline" else None
        self.register_buffer("level", level, persistent=False)
        self.z = nn.Parameter(self.parameterisation.init(base.shape, device=base.device, dtype=base.dtype))
        self.eps_d = float(eps_d)
        self.ink = ink

    def penalty(self) -> torch.Tensor:
        return self.parameterisation.penalty(self.base, self.z, self.eps_d, self.level)

    def forward(self) -> torch.Tensor:
        w = self.parameterisation.glyphs(self.base, self.z, self.eps_d, self.level)
        if self.ink == "binary":
            w = w + ((w > 0.5).to(w.dtype) - w).detach()
        return w


@dataclass(frozen=True)
class StageSpec:
    """One training stage. ``steps`` optimisation steps; eps follows ``schedule``."""

    recipe: str
    steps: int
    schedule: EpsSchedule
    lr: float
    lr_glyphs: float
    lr_milestones: tuple[float, ...] = (0.7, 0.9)
    train_bounds: str = "mixed"
    lr_robustifier: float = 1e-3
    crown_k: int | None = None  # relaxed bounds on the k hardest margins only (None: all)
    eps_print: float = 0.0  # the print attack's budget at eps_A (glyph stages only; 0: the image attack alone)
    # what the collapse error advises (the caller's options; the library's default names none)
    collapse_advice: str = "use more steps or a longer eps ramp"

    @property
    def trains_classifier(self) -> bool:
        return self.recipe in ("vanilla", "crown-ibp", "pc", "rc")

    @property
    def trains_glyphs(self) -> bool:
        return self.recipe in ("p", "pc")

    @property
    def display_name(self) -> str:
        """The stage's name for progress displays: the recipe, except that a certified stage 1
        ("crown-ibp") trained with other bounds than the paper's mix says which
        ("crown-ibp:ibp": an IBP-trained classifier, not a CROWN-IBP one)."""
        if self.recipe == "crown-ibp" and self.train_bounds != "mixed":
            return f"crown-ibp:{self.train_bounds}"
        return self.recipe

    @property
    def uses_robustifier(self) -> bool:
        return self.recipe in ("r", "rc")


def bounds_label(train_bounds: str, crown_k: int | None = None) -> str:
    """Training bounds in words, for tables: "IBP", "CROWN-IBP/IBP mix" (the paper's), with
    the pruning when set ("CROWN-IBP/IBP mix, CROWN-IBP on the 4 hardest margins")."""
    name = "CROWN-IBP/IBP mix" if train_bounds == "mixed" else train_bounds.upper().replace("ALPHA", "alpha")
    if crown_k is not None and train_bounds != "ibp":
        name += f", CROWN-IBP on the {crown_k} hardest margins"
    return name


def _mean(values) -> float:
    """Mean of the finite values (a window's certified error is NaN on its steps at eps 0: the
    mean is over the steps that certified); NaN when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def lr_factor(step: int, steps: int, milestones: tuple[float, ...]) -> float:
    """Step decay x0.1 at each milestone (a fraction of the stage)."""
    return 0.1 ** sum(step >= int(m * steps) for m in milestones)


def batch_errors(logits: torch.Tensor, margins: torch.Tensor | None, labels: torch.Tensor) -> tuple[float, float]:
    """(clean error, certified error) of a batch; uncertified = some other margin bound <= 0."""
    clean = (logits.argmax(1) != labels).float().mean().item()
    if margins is None:
        return clean, float("nan")
    other = margins.scatter(1, labels[:, None], float("inf"))
    cert = (other.min(1).values <= 0).float().mean().item()
    return clean, cert


Batch = Callable[[torch.Generator], "tuple[torch.Tensor, torch.Tensor]"]


class Trainer:
    """Holds what a run trains (classifier, glyphs, robustifier), its optimisers and RNG, and
    checkpoints.

    ``glyphs`` + ``acquisition``: the default batch, fresh acquisitions of every glyph.
    ``batch(generator) -> (x [B, 3, R, R], labels [B])``: any other source (then ``glyphs``
    may be None and ``num_classes`` is required). ``robustifier``: the A5/R network that
    stages ``r`` and ``rc`` put between the batch and the classifier.

    ``checkpoint(path)`` / ``restore(path)`` save and load everything needed to continue a
    stage exactly where it stopped: weights, glyph parameters, optimiser states, the step, the
    records since the last log, and the generator's state (so an interrupted run replays the
    same draws and logs the same figures); ``saved`` is (stage index, step) of the last one
    written or restored. ``run_stage`` stops with a checkpoint on Ctrl-C or SIGTERM
    (``a5ocr.training.interrupt``).

    ``dist``: the processes of a ``torchrun`` run (``a5ocr.training.distributed``; default the
    single process, which changes nothing). With several, each draws its share of every batch
    (``dist.shard`` of the labels) from its own generator (seeded ``dist.rank_seed(seed)``), the
    gradients are averaged after each backward pass (``dist.average_gradients``, with the step's
    metrics, so that every process sees the same figures and takes the same decisions: a collapse,
    a checkpoint), and the checkpoint holds every process's generator state (written by rank 0).
    """

    def __init__(self, model: nn.Module, glyphs: RobustGlyphs | None, acquisition: Acquisition | None, *, copies: int = 1,
                 seed: int, device: torch.device, robustifier: nn.Module | None = None, batch: Batch | None = None,
                 num_classes: int | None = None, dist: Distributed | None = None):
        if batch is None and (glyphs is None or acquisition is None):
            raise ValueError("Trainer needs glyphs and an acquisition, or a batch source")
        self.dist = dist or Distributed()
        if self.dist.active and batch is not None:
            raise ValueError("a batch source is not split across processes: distributed training draws acquisitions")
        self.model = model.to(device)
        self.glyphs = glyphs.to(device) if glyphs is not None else None
        self.acquisition = acquisition
        self.robustifier = robustifier.to(device) if robustifier is not None else None
        self.batch = batch
        self.num_classes = int(num_classes if num_classes is not None else glyphs.base.shape[0])
        self.copies = copies
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(self.dist.rank_seed(seed))
        if self.dist.active:
            self.dist.shard(self.num_classes * copies)  # refuses a batch that does not split
            self.dist.broadcast_(t for m in (self.model, self.glyphs, self.robustifier) if m is not None
                                 for t in (*m.parameters(), *m.buffers()))
        self.stage_index = 0
        self.step = 0
        self.window: list[dict] = []  # the steps' records since the last log (``run_stage``)
        self.saved: tuple[int, int] | None = None  # (stage_index, step) of the last checkpoint written or restored
        self.opt_classifier: torch.optim.Optimizer | None = None
        self.opt_glyphs: torch.optim.Optimizer | None = None
        self.opt_robustifier: torch.optim.Optimizer | None = None

    # -- optimisers ---------------------------------------------------------------------
    def start_stage(self, spec: StageSpec) -> None:
        if spec.uses_robustifier and self.robustifier is None:
            raise ValueError(f"stage {spec.recipe!r} needs a robustifier")
        if spec.trains_glyphs and self.glyphs is None:
            raise ValueError(f"stage {spec.recipe!r} needs glyphs")
        self.step = 0
        self.window = []
        self.opt_classifier = torch.optim.Adam(self.model.parameters(), lr=spec.lr) if spec.trains_classifier else None
        self.opt_glyphs = torch.optim.Adam(self.glyphs.parameters(), lr=spec.lr_glyphs) if spec.trains_glyphs else None
        self.opt_robustifier = (torch.optim.Adam(self.robustifier.parameters(), lr=spec.lr_robustifier)
                                if spec.uses_robustifier else None)

    def labels(self) -> torch.Tensor:
        """The labels of this process's acquisitions of a step: every glyph ``copies`` times
        (with several processes, this process's contiguous share of them)."""
        labels = torch.arange(self.num_classes, device=self.device).repeat(self.copies)
        return labels[self.dist.shard(labels.numel())] if self.dist.active else labels

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training batch (x [B, 3, R, R], labels [B]) before any robustifier."""
        if self.batch is not None:
            return self.batch(self.generator)
        labels = self.labels()
        w = self.glyphs()
        return self.acquisition(w[labels], self.generator), labels

    def draw_printed(self, eps_print: float) -> tuple[torch.Tensor, torch.Tensor, PrintBox]:
        """``draw`` (the same draws) with the batch's print box: glyphs, camera parameters."""
        labels = self.labels()
        w = self.glyphs()[labels]
        x, params = self.acquisition(w, self.generator, return_params=True)
        return x, labels, PrintBox(w, params, self.acquisition.cfg, eps_print)

    # -- one step -----------------------------------------------------------------------
    def train_step(self, spec: StageSpec) -> dict:
        """One optimisation step on a fresh batch (``draw``); returns its metrics."""
        eps = spec.schedule(self.step)
        f = spec.schedule.mixing(self.step)
        self.model.train(spec.trains_classifier)
        eps_print = spec.eps_print * eps / spec.schedule.eps_max if spec.eps_print > 0 and eps > 0 else 0.0
        printed = None
        if eps_print > 0 and spec.trains_glyphs:
            x, labels, printed = self.draw_printed(eps_print)
        else:
            x, labels = self.draw()
        if spec.uses_robustifier:
            self.robustifier.train()
            x = self.robustifier(x)
        loss, stats = a5_loss(self.model, x, labels, eps, f, spec.train_bounds, spec.crown_k, printed)
        if spec.trains_glyphs and self.glyphs.parameterisation.tv > 0:
            loss = loss + self.glyphs.penalty()
        scale = lr_factor(self.step, spec.steps, spec.lr_milestones)
        for opt, base_lr in ((self.opt_classifier, spec.lr), (self.opt_glyphs, spec.lr_glyphs),
                             (self.opt_robustifier, spec.lr_robustifier)):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
                for group in opt.param_groups:
                    group["lr"] = base_lr * scale
        if self.dist.active:
            loss.backward()
            loss_value, clean, cert, distinct = self._average_step(loss, stats, labels)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {self.step} of {spec.recipe}")
        else:
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {self.step} of {spec.recipe}")
            loss.backward()
            loss_value, clean, cert, distinct = loss.item(), *self._batch_figures(stats, labels)
        if self.opt_classifier is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
            self.opt_classifier.step()
        if self.opt_glyphs is not None:
            self.opt_glyphs.step()
        if self.opt_robustifier is not None:
            nn.utils.clip_grad_norm_(self.robustifier.parameters(), 10.0)
            self.opt_robustifier.step()
        self.step += 1
        return {"step": self.step, "eps": eps, "f": f, "loss": loss_value, "clean_error": clean, "certified_error": cert,
                "lr_scale": scale, "distinct_predictions": distinct}

    @staticmethod
    def _batch_figures(stats: dict, labels: torch.Tensor) -> tuple[float, float, int]:
        """(clean error, certified error, distinct predicted classes) of this process's batch."""
        clean, cert = batch_errors(stats["logits"].detach(), None if stats["margins"] is None else stats["margins"].detach(), labels)
        return clean, cert, int(torch.unique(stats["logits"].detach().argmax(1)).numel())

    def _average_step(self, loss: torch.Tensor, stats: dict, labels: torch.Tensor) -> tuple[float, float, float, int]:
        """Several processes: average the gradients of every trained parameter (classifier, glyph
        change z, robustifier: the optimisers' parameters) and the step's figures over them; returns
        the whole batch's (loss, clean error, certified error, distinct predicted classes), the same
        on every process. The shares are of equal size, so the mean of the means is the batch's."""
        params = [p for opt in (self.opt_classifier, self.opt_glyphs, self.opt_robustifier) if opt is not None
                  for group in opt.param_groups for p in group["params"]]
        clean, cert, _ = self._batch_figures(stats, labels)
        counts = torch.bincount(stats["logits"].detach().argmax(1), minlength=self.num_classes).tolist()
        summed = self.dist.average_gradients(params, [loss.item(), clean, cert, *counts])
        n = self.dist.world_size
        return summed[0] / n, summed[1] / n, summed[2] / n, sum(c > 0 for c in summed[3:])

    # -- checkpoints --------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "stage_index": self.stage_index,
            "step": self.step,
            "window": list(self.window),  # so that the resumed run logs the same means
            "model": self.model.state_dict(),
            "glyphs": None if self.glyphs is None else self.glyphs.state_dict(),
            "robustifier": None if self.robustifier is None else self.robustifier.state_dict(),
            "opt_classifier": None if self.opt_classifier is None else self.opt_classifier.state_dict(),
            "opt_glyphs": None if self.opt_glyphs is None else self.opt_glyphs.state_dict(),
            "opt_robustifier": None if self.opt_robustifier is None else self.opt_robustifier.state_dict(),
            "generator": self.generator.get_state(),
        }

    def checkpoint(self, path: Path) -> None:
        """Write the whole training state atomically (``torch.save``; read back with weights_only).
        Several processes: every one calls it (their generator states are gathered), rank 0 writes
        them all (``generators`` [world, n], and ``world_size``) with its own state."""
        state = self.state()
        if self.dist.active:
            state["generators"] = torch.stack(self.dist.gather(state["generator"]))
            state["world_size"] = self.dist.world_size
            if not self.dist.is_main:
                self.saved = (self.stage_index, self.step)
                return
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        self.saved = (self.stage_index, self.step)

    def restore(self, path: Path, stages: list[StageSpec]) -> None:
        """Continue from ``checkpoint(path)``: only tensors and plain containers are read."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        for name in ("glyphs", "robustifier"):
            mine, saved = getattr(self, name), state.get(name)
            if (mine is None) != (saved is None):
                raise ValueError(f"the checkpoint {'has no' if saved is None else 'has a'} {name} state, this run "
                                 f"{'has' if saved is None else 'has none'}")
            if mine is not None:
                mine.load_state_dict(saved)
        self.stage_index = int(state["stage_index"])
        if self.stage_index < len(stages):
            self.start_stage(stages[self.stage_index])
            for name in ("opt_classifier", "opt_glyphs", "opt_robustifier"):
                if state.get(name) is not None and getattr(self, name) is not None:
                    getattr(self, name).load_state_dict(state[name])
        self.step = int(state["step"])
        self.window = list(state.get("window", []))  # none in checkpoints from before it was kept
        self.saved = (self.stage_index, self.step)
        self.generator.set_state(self._saved_generator(state).cpu())  # RNG states are CPU byte tensors on every device

    def _saved_generator(self, state: dict) -> torch.Tensor:
        """This process's generator state in a checkpoint; ``CheckpointError`` when the checkpoint
        was written by another number of processes (its draws would not replay)."""
        problem = self.dist.resume_problem(int(state.get("world_size", 1)))
        if problem:
            raise CheckpointError(f"the checkpoint: {problem}")
        # a row of the stacked states is a view into their storage: set_state needs a tensor of its own
        return state["generators"][self.dist.rank].clone() if self.dist.active else state["generator"]

    # -- a whole stage ------------------------------------------------------------------
    def run_stage(
        self,
        spec: StageSpec,
        *,
        on_log: Callable[[dict], None] | None = None,
        on_checkpoint: Callable[[], None] | None = None,
        log_every: int = 25,
        checkpoint_seconds: float = 120.0,
        stop: StopRequest | None = None,
    ) -> None:
        """Run ``spec`` from ``self.step`` to ``spec.steps``; checkpoint every ``checkpoint_seconds``.

        Raises ``CollapseError`` when the classifier has collapsed to one class (every batch
        since the last log predicted a single class), which a too-fast eps ramp causes; its
        message ends with ``spec.collapse_advice``. The check's window (``log_every`` batches,
        from step ``2 * log_every``) stays in steps whatever the stage's length: it is the
        evidence of a collapse (that many constant batches in a row), not a point of the schedule.

        Ctrl-C or SIGTERM (``stop``, a ``StopRequest`` a signal sets; None: the stage sets up its
        own ``stop_on_signals``): after the step in progress, every process at the same step,
        ``on_checkpoint`` writes the state at that step and ``TrainingStopped`` is raised.
        """
        if stop is None:
            with stop_on_signals() as own:
                return self.run_stage(spec, on_log=on_log, on_checkpoint=on_checkpoint, log_every=log_every,
                                      checkpoint_seconds=checkpoint_seconds, stop=own)
        last_ckpt = time.monotonic()
        while self.step < spec.steps:
            self.window.append(self.train_step(spec))
            if self.step % log_every == 0 or self.step == spec.steps:
                self._log_window(spec, on_log, log_every)
            self.stop_if_requested(stop, on_checkpoint)
            # every process checkpoints together (the generator states are gathered): rank 0's clock decides
            if on_checkpoint is not None and self.dist.agree(time.monotonic() - last_ckpt >= checkpoint_seconds):
                on_checkpoint()
                last_ckpt = time.monotonic()

    def _log_window(self, spec: StageSpec, on_log: Callable[[dict], None] | None, log_every: int) -> None:
        """Log the steps since the last log (their mean loss and errors, with the last step's
        record) and check them for a collapse (``run_stage``)."""
        window, self.window = self.window, []
        summary = {key: _mean(r[key] for r in window) for key in ("loss", "clean_error", "certified_error")}
        constant = all(r["distinct_predictions"] == 1 for r in window)
        rec = {**window[-1], **summary, "stage": spec.recipe}
        if on_log is not None:
            on_log(rec)
        # The collapse signature: every batch of the window predicted one class only.
        if spec.trains_classifier and self.num_classes > 2 and constant and rec["eps"] > 0 and self.step >= 2 * log_every:
            raise CollapseError(
                f"the classifier collapsed to a constant at step {self.step} of {spec.recipe} "
                f"(clean error {summary['clean_error']:.1%}); {spec.collapse_advice}"
            )

    def stop_if_requested(self, stop: StopRequest, on_checkpoint: Callable[[], None] | None) -> None:
        """When a signal has set ``stop`` (rank 0's flag decides, so every process stops at the
        same step): the checkpoint at this step (``on_checkpoint``), then ``TrainingStopped``."""
        if self.dist.agree(stop.requested):
            if on_checkpoint is not None:
                on_checkpoint()
            raise TrainingStopped(stop.signum or signal.SIGINT)


def run_stages(trainer: Trainer, stages: list[StageSpec], *, reporter, on_log: Callable[[dict], None],
               on_checkpoint: Callable[[], None], checkpoint_seconds: float = 120.0,
               after_stage: Callable[[int, StageSpec], None] | None = None) -> None:
    """Run ``stages`` from where ``trainer`` stands (``stage_index``, ``step``) to the end:
    ``reporter.stage`` at each start, ``after_stage(index, spec)`` when one ends, and a
    checkpoint after every stage (and every ``checkpoint_seconds`` within one). Ctrl-C or
    SIGTERM, from the first stage's start to the last checkpoint, stops at the next step or
    stage end with a checkpoint there (``Trainer.run_stage``; ``TrainingStopped``)."""
    with stop_on_signals() as stop:
        while trainer.stage_index < len(stages):
            spec = stages[trainer.stage_index]
            reporter.stage(spec.display_name, spec.steps, trainer.step)
            trainer.run_stage(spec, on_log=on_log, on_checkpoint=on_checkpoint, checkpoint_seconds=checkpoint_seconds,
                              stop=stop)
            if after_stage is not None:
                after_stage(trainer.stage_index, spec)
            trainer.stage_index += 1
            if trainer.stage_index < len(stages):
                trainer.start_stage(stages[trainer.stage_index])
            on_checkpoint()
            trainer.stop_if_requested(stop, None)  # the checkpoint is the one just written


def make_stage(recipe: str, steps: int, eps_a: float, *, warmup: int = 0, ramp: int = 0, lr: float = 1e-3,
               lr_glyphs: float = 0.05, train_bounds: str = "mixed", lr_robustifier: float = 1e-3,
               crown_k: int | None = None, collapse_advice: str | None = None, eps_print: float = 0.0) -> StageSpec:
    """A stage of ``recipe`` with an eps schedule to ``eps_a`` (vanilla: eps 0); ``collapse_advice``
    ends the collapse error (default: ``StageSpec``'s, which names no option); ``eps_print``: the
    print budget at eps_a (glyph stages, p and pc, only)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r} (one of: {', '.join(RECIPES)})")
    if eps_print > 0 and recipe not in ("p", "pc"):
        raise ValueError(f"eps_print is for the glyph stages (p, pc), not {recipe!r}")
    eps_max = 0.0 if recipe == "vanilla" else eps_a
    advice = {} if collapse_advice is None else {"collapse_advice": collapse_advice}
    return StageSpec(recipe=recipe, steps=steps, schedule=EpsSchedule(eps_max, warmup, ramp), lr=lr, lr_glyphs=lr_glyphs,
                     train_bounds=train_bounds, lr_robustifier=lr_robustifier, crown_k=crown_k, eps_print=eps_print,
                     **advice)
