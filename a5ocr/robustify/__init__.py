"""``a5ocr robustify``: the image-side A5 recipes A5/O, A5/R and A5/RC (paper Sec. 3).

They protect the acquired image itself, before it travels to the classifier (in a scanner's
firmware, say). The defended image is z = clamp(x + dx_D, 0, 1), dx_D = eps_D (2 sigmoid(.) - 1)
(Eq. 4-5, ``a5ocr.training.losses.defended``), so ||dx_D||_inf <= eps_D; the man in the middle then
changes z by any ||dx_A||_inf <= eps_A, and every certificate is about the classifier C at z.

* **A5/O** (``o``): per image, knowing its label, the free parameters of dx_D are optimised
  with RMSprop against the worst-case cross-entropy of C at eps_A^R (``offline_defence``; the
  best step per image is kept). Nothing is trained: an offline baseline, run on the test set.
* **A5/R** (``r``): a robustifier network R (``Robustifier``, identity at initialisation) maps
  x to z without the label; trained on the training set for a fixed C.
* **A5/RC** (``rc``): A5/R, then R and C fine-tuned together.

Training uses the one loop of ``a5ocr.training.trainer`` (stages ``r`` and ``rc``: worst-case
cross-entropy at eps_A^R, IBP or mixed bounds as the preset says).

**Data** (``RobustifyConfig``, ``load_data``): acquired glyph images of a design run (``run``)
or a font, or any image dataset (``a5ocr.datasets.load_dataset``), taken as already acquired.

**C**: ``classifier`` (a5ocr safetensors), else the design run's ``baseline_classifier``,
else a CROWN-IBP classifier trained first (stage 1, as ``a5ocr design``).

Modules, in data-flow order: ``config`` (settings, recipes, presets), ``data`` (data sources,
the legacy C), ``model`` (R and its file), ``offline`` (A5/O), ``defence`` (a recipe applied to
test images), ``run`` (the run folder end to end), ``evaluate`` (``a5ocr evaluate`` on a run).
"""

from a5ocr.datasets import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, ImageSet, load_dataset, split
from a5ocr.errors import DatasetError, RobustifyError, RunError
from a5ocr.robustify.config import PRESETS, RECIPE_NAMES, RECIPES, RobustifyConfig
from a5ocr.robustify.data import Data, load_data
from a5ocr.robustify.defence import DefenceStats, defence_transform
from a5ocr.robustify.evaluate import evaluate_robustify_run, is_robustify_run
from a5ocr.robustify.model import ROBUSTIFIER_FORMAT, Robustifier, load_robustifier, save_robustifier
from a5ocr.robustify.offline import offline_defence
from a5ocr.robustify.run import default_out, run_robustify

__all__ = [
    "Data",
    "DatasetError",
    "DefenceStats",
    "IMAGE_SUFFIXES",
    "ImageSet",
    "MAX_IMAGE_PIXELS",
    "PRESETS",
    "RECIPES",
    "RECIPE_NAMES",
    "ROBUSTIFIER_FORMAT",
    "Robustifier",
    "RobustifyConfig",
    "RobustifyError",
    "RunError",
    "default_out",
    "defence_transform",
    "evaluate_robustify_run",
    "is_robustify_run",
    "load_data",
    "load_dataset",
    "load_robustifier",
    "offline_defence",
    "run_robustify",
    "save_robustifier",
    "split",
]
