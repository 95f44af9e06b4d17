"""The settings of an image-side run (``RobustifyConfig``, written to ``config.json``), its
recipes and its presets.

``RobustifyConfig`` is a ``a5ocr.training.config.TrainingConfig`` (font and characters, budgets,
the stage-1 classifier, the end-of-run evaluation, device, seed, run folder, acquisition) with
the image-side fields on top; every field keeps the name old robustify ``config.json`` files use.
Only stage 1 (the CROWN-IBP classifier) has an eps schedule, scaled to ``--stage1-steps`` as in
design; A5/R and A5/RC run at eps_A^R from their first step and decay their learning rate at
fractions of their length, so ``--steps`` and ``--rc-steps`` need no other change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

from a5ocr.errors import RobustifyError, check_in_unit_interval
from a5ocr.training.config import PRESETS as DESIGN_PRESETS
from a5ocr.training.config import STAGE1_PRESET_KEYS, TrainingConfig

RECIPES = ("o", "r", "rc")
RECIPE_NAMES = {"o": "A5/O", "r": "A5/R", "rc": "A5/RC"}

PRESETS: dict[str, dict] = {
    # the stage-1 settings are those of a5ocr.training.config's presets of the same name
    "cpu": {"r_steps": 1600, "rc_steps": 1600, "o_steps": 100, "batch_size": 124, "width": 32, "depth": 4},
    "paper": {"r_steps": 4000, "rc_steps": 4000, "o_steps": 100, "batch_size": 124, "width": 64, "depth": 5},
    "tiny": {"r_steps": 20, "rc_steps": 20, "o_steps": 5, "batch_size": 16, "width": 8, "depth": 2},
}


@dataclass
class RobustifyConfig(TrainingConfig):
    """Everything an image-side run depends on (written to ``config.json``): the shared training
    settings (``TrainingConfig``; ``classifier`` is the legacy C) and these."""

    ERROR: ClassVar[type] = RobustifyError

    eps_d: float = 0.3  # (a TrainingConfig field; robustify's default)
    recipe: str = "r"
    run: str | None = None  # a design run: its prototypes, acquisition and stage-1 classifier
    data: str | None = None  # an image dataset (folder or .npz) instead of glyphs
    robustifier: str | None = None  # start R from this file (an A5/R run's): rc then skips its r stage
    eps_r: float | None = None  # eps_A^R of training / optimisation (default eps_a)
    r_steps: int | None = None
    rc_steps: int | None = None
    o_steps: int | None = None
    o_lr: float = 0.1
    batch_size: int | None = None
    width: int | None = None
    depth: int | None = None
    lr_rc: float = 1e-4
    lr_robustifier: float = 1e-3
    test_fraction: float = 0.2

    def resolved(self) -> "RobustifyConfig":
        """Fill preset defaults and check every value (``RobustifyError``, one readable line)."""
        if self.recipe not in RECIPES:
            raise RobustifyError(f"--recipe must be o, r or rc, got {self.recipe!r}")
        self.check_preset(PRESETS)
        if self.run and self.data:
            raise RobustifyError("give --run (acquired glyphs of a design run) or --data (an image dataset), not both")
        if self.robustifier and self.recipe == "o":
            raise RobustifyError("A5/O optimises each image on its own: it takes no --robustifier")
        self.check_budget("eps_a")
        self.check_budget("eps_r")
        self.check_budget("eps_d", closed_top=True)
        check_in_unit_interval(self.test_fraction, "--test-fraction", RobustifyError)
        self.check_samples()
        if not (self.o_lr > 0 and math.isfinite(self.o_lr)):
            raise RobustifyError(f"--o-lr must be positive, got {self.o_lr}")
        stage1 = DESIGN_PRESETS[self.preset]
        cfg = self.with_scaled_schedule(stage1)  # stage 1's warmup and ramp follow --stage1-steps
        cfg = cfg.with_preset({**{k: stage1[k] for k in STAGE1_PRESET_KEYS}, **PRESETS[self.preset]})
        if cfg.eps_r is None:
            cfg = replace(cfg, eps_r=cfg.eps_a)
        cfg = cfg.with_eval_seed()
        cfg.check_resolution()
        cfg.check_at_least_one(("copies", "stage1_steps", "r_steps", "rc_steps", "batch_size", "width", "depth"))
        cfg.check_schedule()
        if cfg.o_steps < 0:
            raise RobustifyError("--o-steps must be >= 0")
        return cfg.with_checked_bounds()
