"""The settings every training run shares (``TrainingConfig``), its presets and its checks.

``a5ocr design`` (``DesignConfig``) and ``a5ocr robustify`` (``RobustifyConfig``) derive from
``TrainingConfig``: the font and characters, the budgets, the stage-1 classifier (its steps,
eps schedule, learning rate and training bounds), the end-of-run evaluation (samples per
character, seed, certification methods), the device, seed and run folder, the acquisition
model. Each field has one name in both; the config record of ``config.json`` is ``to_dict()``,
read back with ``from_dict`` (which maps the names old run folders used, ``runs.LEGACY_CONFIG_NAMES``).

The checks are building blocks (``check_preset``, ``check_budget``, ``check_samples``,
``with_scaled_schedule``, ``with_preset``, ``with_eval_seed``, ``check_resolution``,
``check_at_least_one``, ``check_schedule``, ``with_checked_bounds``): each subclass's
``resolved()`` calls them in its own order and they raise the subclass's ``ERROR`` (one
readable line).

Stage 1's eps schedule follows its length: a warmup or ramp the user does not give is the
preset's, scaled by ``stage1_steps`` / the preset's ``stage1_steps`` (``scaled_schedule``; at
the preset's own length exactly the preset's). The resolved values are what ``config.json``
records, and ``check_schedule`` refuses, before anything trains, a schedule that does not reach
eps_A within stage 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import ClassVar, Iterable

from a5ocr.acquisition import AcquisitionConfig
from a5ocr.bounds import METHODS
from a5ocr.errors import A5Error, check_in_unit_interval
from a5ocr.runs import LEGACY_CONFIG_DEFAULTS, current_config_names, default_eval_seed

PRESETS: dict[str, dict] = {
    # CPU default: 32x32, the wider small net, IBP bounds in training (the paper's mix costs 2.1x
    # an IBP step with --crown-k 4, 22x on every margin: benchmarks/RESULTS.md). Steps: 3000 IBP
    # steps of ~0.16 s fit `a5ocr design` in 10 minutes on a 2-core CPU at print scale 1 (at 4 the
    # acquisition adds ~0.1 s a step: not re-measured on a quiet machine; the schedule's shape is
    # benchmarks/tune_design.py's 2400/240/1200 + 1600, shortened in proportion).
    # print_scale 4 with an outline change (outline:4: the glyph stays monochrome, its edges move
    # by at most eps_D sensor px on the sensor's grid): designed at 128 px per canvas, it is what a
    # font can hold; defence_tv 0.3 penalises the offset's variation along the edges (fewer
    # wiggles: fewer outline points). The default-length designs measured (README, same stage 1):
    # A5/PC outline:4 with TV 0.3 0.00% clean / 0.19% certified, without 0.00% / 0.21%, coarse:4
    # 0.00% / 0.32% (1.77% through its font), S = 1 per pixel 0.02% / 0.55%, S = 4 per print
    # pixel 0.05% / 0.87%.
    "cpu": {"resolution": 32, "arch": "cpu", "copies": 2, "stage1_steps": 1900, "warmup": 190, "ramp": 950,
            "stage2_steps": 1100, "train_bounds": "ibp", "print_scale": 4, "defence": "outline:4", "defence_tv": 0.3},
    # The paper's setup: 128x128, the paper's net, lb = f*CROWN-IBP + (1-f)*IBP; meant for a GPU.
    "paper": {"resolution": 128, "arch": "paper", "copies": 2, "stage1_steps": 6000, "warmup": 600, "ramp": 3000,
              "stage2_steps": 4000, "train_bounds": "mixed", "print_scale": 1, "defence": "pixel"},
    # Seconds, for tests and smoke runs.
    "tiny": {"resolution": 16, "arch": "tiny", "copies": 1, "stage1_steps": 30, "warmup": 5, "ramp": 10,
             "stage2_steps": 20, "train_bounds": "ibp", "print_scale": 1, "defence": "pixel"},
}
# The stage-1 part of a preset: what every training run (design or robustify) fills from it.
STAGE1_PRESET_KEYS = ("resolution", "arch", "copies", "stage1_steps", "warmup", "ramp", "train_bounds")


def scaled_schedule(preset: dict, steps: int) -> tuple[int, int]:
    """The preset's (warmup, ramp) for a stage 1 of ``steps`` steps, in proportion to the
    preset's ``stage1_steps``: exactly the preset's at its own length.

    Rounded down: floor(a) + floor(b) <= floor(a + b), so a preset whose warmup + ramp fits in
    its stage 1 gives a scaled schedule that fits in ``steps`` (eps_A reached within stage 1)."""
    base = preset["stage1_steps"]
    return preset["warmup"] * steps // base, preset["ramp"] * steps // base


def bounds_options_problem(train_bounds: str, certify_methods) -> str | None:
    """What is wrong with a run's training bounds ("mixed" or a bound method) and certification
    methods, in one line; None when both are valid. Shared by design and robustify configs."""
    if train_bounds not in ("mixed", *METHODS):
        return f"train_bounds must be mixed or one of {', '.join(METHODS)}, got {train_bounds!r}"
    for m in certify_methods:
        if m not in METHODS:
            return f"unknown certification method {m!r} (one of: {', '.join(METHODS)})"
    return None


def _crown_k_problem(crown_k) -> str | None:
    """What is wrong with ``crown_k`` (None or an integer >= 1), in one line; None when valid."""
    if crown_k is None or (isinstance(crown_k, int) and not isinstance(crown_k, bool) and crown_k >= 1):
        return None
    return f"--crown-k must be an integer of at least 1 (or unset: every margin), got {crown_k!r}"


@dataclass
class TrainingConfig:
    """The settings shared by every training run (written to ``config.json`` with the run's own).

    ``None`` fields come from the preset (``with_preset``) or, ``eval_seed``, from the training
    seed (``with_eval_seed``)."""

    ERROR: ClassVar[type[A5Error]] = A5Error  # what the checks raise
    SAMPLES_FLAG: ClassVar[str] = "--samples-per-char"  # the option that sets samples_per_char
    STAGE1_FLAG: ClassVar[str] = "--stage1-steps"  # the option that sets stage1_steps

    font: str = "comic-neue"
    chars: str = "62"
    eps_a: float = 0.1
    eps_d: float = 0.5
    classifier: str | None = None
    preset: str = "cpu"
    resolution: int | None = None
    arch: str | None = None
    device: str = "auto"
    seed: int = 0
    out: str | None = None
    copies: int | None = None
    stage1_steps: int | None = None
    warmup: int | None = None
    ramp: int | None = None
    lr: float = 1e-3
    train_bounds: str | None = None
    # mixed / relaxed training bounds on the k hardest margins by IBP only (None: every margin)
    crown_k: int | None = None
    samples_per_char: int = 100
    eval_seed: int | None = None
    certify_methods: tuple[str, ...] = ("ibp", "crown-ibp")
    checkpoint_seconds: float = 120.0
    acquisition: dict = field(default_factory=lambda: AcquisitionConfig().to_dict())

    # -- the config record ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict):
        """The config of a ``config.json`` record (``to_dict``'s, or an old run folder's: legacy
        names mapped); ``TypeError`` on a key that is no field. A key added since old records
        (``LEGACY_CONFIG_DEFAULTS``) that this class has no field for is dropped: ``print_scale``
        and ``parameterisation`` are the design's."""
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in current_config_names(record).items() if k in names or k not in LEGACY_CONFIG_DEFAULTS}
        if "certify_methods" in d:
            d["certify_methods"] = tuple(d["certify_methods"])
        return cls(**d)

    # -- checks (building blocks of ``resolved``) ------------------------------------------------
    def check_preset(self, presets: dict) -> None:
        if self.preset not in presets:
            raise self.ERROR(f"unknown preset {self.preset!r} (one of: {', '.join(presets)})")

    def check_budget(self, name: str, *, closed_top: bool = False) -> None:
        """A budget field (eps_a, eps_d, ...) in (0, 1) (``closed_top``: (0, 1]); None passes."""
        value = getattr(self, name)
        if value is not None:
            check_in_unit_interval(value, f"--{name.replace('_', '-')}", self.ERROR, closed_top=closed_top)

    def check_samples(self) -> None:
        if self.samples_per_char < 1:
            raise self.ERROR(f"{self.SAMPLES_FLAG} must be at least 1")

    def with_scaled_schedule(self, preset: dict):
        """The config with ``warmup`` and ``ramp``, where unset, the preset's scaled to this run's
        stage 1 (``scaled_schedule``); unchanged while ``stage1_steps`` is below 1 (refused later
        by ``check_at_least_one``)."""
        steps = self.stage1_steps if self.stage1_steps is not None else preset["stage1_steps"]
        if steps < 1:
            return self
        warmup, ramp = scaled_schedule(preset, steps)
        return replace(self, warmup=self.warmup if self.warmup is not None else warmup,
                       ramp=self.ramp if self.ramp is not None else ramp)

    def check_schedule(self) -> None:
        """``warmup`` and ``ramp`` >= 0, and eps reaching eps_A within stage 1
        (warmup + ramp <= stage1_steps): else the next stage, at full eps_A, would start from a
        classifier that never trained at it."""
        for name in ("warmup", "ramp"):
            if getattr(self, name) < 0:
                raise self.ERROR(f"--{name} must be at least 0, got {getattr(self, name)}")
        if self.warmup + self.ramp > self.stage1_steps:
            raise self.ERROR(
                f"the eps schedule does not reach eps_A within stage 1: --warmup {self.warmup} + --ramp {self.ramp} "
                f"= {self.warmup + self.ramp} steps > {self.STAGE1_FLAG} {self.stage1_steps}; give a shorter "
                f"--warmup / --ramp or more {self.STAGE1_FLAG} (unset, --warmup and --ramp scale with {self.STAGE1_FLAG})")

    def stage1_collapse_advice(self) -> str:
        """What to change when stage 1 collapses the classifier (options of this run's command)."""
        return f"use more {self.STAGE1_FLAG} or a longer --ramp, or a smaller --eps-a"

    def with_preset(self, values: dict):
        """The config with each ``None`` field among ``values``' keys set from ``values``."""
        return replace(self, **{k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in values.items()})

    def with_eval_seed(self):
        """The config with the default evaluation seed (``runs.default_eval_seed``) when it names none."""
        return self if self.eval_seed is not None else replace(self, eval_seed=default_eval_seed(self.seed))

    def check_resolution(self) -> None:
        if self.resolution < 8:
            raise self.ERROR("--resolution must be at least 8")

    def check_at_least_one(self, names: Iterable[str], *, as_flags: bool = True) -> None:
        """Each field of ``names`` >= 1; the message names the option (``--stage1-steps``) or,
        without ``as_flags``, the field (``stage1_steps``)."""
        for name in names:
            if getattr(self, name) < 1:
                label = f"--{name.replace('_', '-')}" if as_flags else name
                raise self.ERROR(f"{label} must be at least 1")

    def with_checked_bounds(self):
        """Check ``train_bounds`` and ``certify_methods`` (``bounds_options_problem``); the config
        with ``certify_methods`` as a tuple."""
        problem = bounds_options_problem(self.train_bounds, self.certify_methods) or _crown_k_problem(self.crown_k)
        if problem:
            raise self.ERROR(problem)
        return replace(self, certify_methods=tuple(self.certify_methods))
