"""The data of an image-side run (``Data``, ``load_data``) and its legacy classifier C.

Acquired glyph images -- the acquisition model applied to a font's prototypes, fresh draws every
training step; the test set is ``samples_per_char`` draws per glyph with the evaluation seed --
from a design run (its prototypes, acquisition and stage-1 CROWN-IBP classifier) or a font; or
any image dataset (``a5ocr.datasets.load_dataset``), taken as already acquired.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import torch
from torch import nn

from a5ocr import models
from a5ocr.acquisition import Acquisition, AcquisitionConfig
from a5ocr.datasets import ImageSet, load_dataset
from a5ocr.errors import RobustifyError, RunError
from a5ocr.evaluation import acquisitions
from a5ocr.glyphs import rasterize
from a5ocr.robustify.config import RobustifyConfig
from a5ocr.runs import load_run


@dataclass
class Data:
    """What a run trains and is tested on.

    Glyphs: ``glyphs`` [K, R, R] ink prototypes and ``acquisition`` (fresh training draws; the
    test set is ``samples_per_char`` draws per glyph, seeded). Datasets: ``train`` and ``test``.
    """

    classes: str | list[str]
    resolution: int
    description: str
    glyphs: torch.Tensor | None = None
    acquisition: Acquisition | None = None
    train: ImageSet | None = None
    test: ImageSet | None = None
    font: str | None = None
    legacy: Path | None = None  # the design run's stage-1 classifier

    def test_total(self, samples_per_char: int) -> int:
        return len(self.test) if self.test is not None else self.glyphs.shape[0] * samples_per_char

    def test_chunks(self, samples_per_char: int, seed: int, device: torch.device,
                    chunk: int = 1024) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The test set as (x [n, 3, R, R], labels [n]) chunks on ``device``; the same on every call."""
        if self.test is not None:
            for s in range(0, len(self.test), chunk):
                yield self.test.x[s : s + chunk].to(device), self.test.y[s : s + chunk].to(device)
            return
        yield from acquisitions(self.glyphs.to(device), self.acquisition, samples_per_char, seed, chunk)

    def batch_source(self, batch_size: int, device: torch.device) -> Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]] | None:
        """For datasets, a random minibatch sampler for ``a5ocr.training.trainer.Trainer``; None for glyphs."""
        if self.train is None:
            return None
        x, y = self.train.x.to(device), self.train.y.to(device)

        def draw(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.randint(0, x.shape[0], (batch_size,), generator=generator, device=generator.device)
            return x[idx], y[idx]

        return draw


def load_data(cfg: RobustifyConfig) -> tuple[Data, RobustifyConfig]:
    """The run's data (and cfg with the resolution and acquisition a design run imposes)."""
    if cfg.data:
        train, test = load_dataset(cfg.data, cfg.resolution, test_fraction=cfg.test_fraction, seed=cfg.seed)
        desc = f"dataset {cfg.data}: {len(train)} training and {len(test)} test images, {len(train.classes)} classes"
        return Data(classes=train.classes, resolution=cfg.resolution, description=desc, train=train, test=test), cfg
    if cfg.run:
        try:
            run = load_run(cfg.run)
        except RunError as err:
            raise RobustifyError(str(err)) from None
        cfg = replace(cfg, resolution=run.resolution, acquisition=run.acquisition.to_dict(), font=run.font_path,
                      chars=run.chars)
        legacy = run.path / "baseline_classifier.safetensors"
        if not legacy.is_file() and run.config.get("classifier"):
            legacy = Path(run.config["classifier"])
        desc = f"acquired glyphs of design run {run.path} ({run.family}, {len(run.chars)} characters)"
        return Data(classes=run.chars, resolution=run.resolution, description=desc, glyphs=run.original.float(),
                    acquisition=run.camera(), font=run.font_path,
                    legacy=legacy if legacy.is_file() else None), cfg
    g = rasterize(cfg.font, cfg.chars, cfg.resolution)
    acq = Acquisition(cfg.resolution, AcquisitionConfig.from_dict(cfg.acquisition))
    desc = f"acquired glyphs of {g.family} ({len(g.chars)} characters, {cfg.resolution}x{cfg.resolution})"
    return Data(classes=g.chars, resolution=cfg.resolution, description=desc, glyphs=g.images, acquisition=acq,
                font=g.font_path), cfg


class Legacy(NamedTuple):
    """The classifier C given to a run (``--classifier``, or the design run's stage-1 one)."""

    model: nn.Module
    meta: dict
    path: Path


def legacy_classifier(cfg: RobustifyConfig, data: Data) -> Legacy | None:
    """C from ``cfg.classifier``, else the design run's; None when a classifier is to be
    trained; ``RobustifyError`` when it does not read the data's classes or resolution."""
    path = Path(cfg.classifier) if cfg.classifier else data.legacy
    if path is None:
        return None
    model, meta = models.load_classifier(path)
    if list(meta["chars"]) != list(data.classes):
        raise RobustifyError(f"classifier {path} reads {len(meta['chars'])} classes {_short(meta['chars'])}, "
                             f"the data has {len(data.classes)}: {_short(data.classes)}")
    if meta["resolution"] != data.resolution:
        raise RobustifyError(f"classifier {path} takes {meta['resolution']}x{meta['resolution']} images, the data is "
                             f"{data.resolution}x{data.resolution} (use --resolution {meta['resolution']})")
    return Legacy(model, meta, path)


def _short(classes) -> str:
    s = "".join(classes) if isinstance(classes, str) else ", ".join(classes)
    return repr(s if len(s) <= 40 else s[:37] + "...")

