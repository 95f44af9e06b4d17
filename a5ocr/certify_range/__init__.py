"""Certificates over a camera parameter box, not sampled (``a5ocr certify-range``).

"For every rotation within +-R degrees, every shift within +-s px (and every scale within
+-p %), and every attack of size eps_A on the resulting image, this glyph is read correctly":
a deterministic statement over the box, the other camera stages held at one declared value.

Modules, in the order of the data flow:

* ``box`` -- the parameter box (angle, shift x, shift y, scale), the fixed camera, poses ->
  the parameters of ``a5ocr.acquisition.apply``; ``CertifyRangeError``;
* ``interval`` -- interval images: a sound per-pixel box of every acquisition of a sub-box
  (exact source-coordinate ranges, the exact range of the bilinear interpolant over them, the
  monotone camera stages), widened by eps_A;
* ``split`` -- the queue of sub-boxes, certified in batches (IBP, then CROWN-IBP on what IBP
  leaves) and split along their most sensitive dimension;
* ``sampling`` -- real acquisitions inside leaves: counter-examples, and the cross-check of the
  certified regions (misclassification and the attack);
* ``run`` -- the command on a design run folder and its JSON record; ``figure`` -- the picture
  of a glyph's certified region in the (rotation, shift x) plane.
"""

from a5ocr.certify_range.box import DIMS, CertifyRangeError, FixedCamera, ParamBox, acquisition_params, sample_poses
from a5ocr.certify_range.figure import coverage, region_figure
from a5ocr.certify_range.interval import interval_images, source_boxes
from a5ocr.certify_range.run import RangeRequest, RangeResult, certify_run_range, check_request
from a5ocr.certify_range.sampling import check_certified, find_counterexamples
from a5ocr.certify_range.split import Leaf, SplitOptions, SplitResult, certify_boxes, certify_range

__all__ = [
    "DIMS",
    "CertifyRangeError",
    "FixedCamera",
    "Leaf",
    "ParamBox",
    "RangeRequest",
    "RangeResult",
    "SplitOptions",
    "SplitResult",
    "acquisition_params",
    "certify_boxes",
    "certify_range",
    "certify_run_range",
    "check_certified",
    "check_request",
    "coverage",
    "find_counterexamples",
    "interval_images",
    "region_figure",
    "sample_poses",
    "source_boxes",
]
