"""Certified bound engine: LiRPA (IBP, CROWN, CROWN-IBP, alpha-CROWN) for sequential classifiers.

The model is an ``nn.Sequential`` (nested ones are flattened) of Conv2d, Linear, ReLU,
Flatten, BatchNorm2d (eval mode), AvgPool2d, Identity and ``a5ocr.normalize.Normalize``.
The input set is a box [x_L, x_U] per sample. Bounds are differentiable w.r.t. the box and the
weights (training losses); ``certify`` / ``sound=True`` compute in float64 without gradients.

Entry points (shapes: B samples, K classes, S specs):

* ``margin_spec(labels [B], K) -> [B, K, K]``
* ``margin_lower_bounds(model, x_lower, x_upper, labels, method) -> [B, K]``
* ``mixed_margin_lower_bounds(model, x_lower, x_upper, labels, f) -> [B, K]``
* ``robust_margins(model, x_lower, x_upper, labels, method, f=None, k=None) -> [B, K]``: training
  margins, optionally mixed with IBP (f) and with <method> only on the k hardest margins by IBP
* ``robust_loss(...)`` = ``worst_case_cross_entropy(robust_margins(...), labels)`` (a scalar)
* ``robust_loss_and_margins(...) -> (robust_loss, margins [B, K] detached)``: what training
  uses; a crown-ibp pass over the memory budget runs in chunks differentiated one at a time
* ``compute_bounds(model, x_lower, x_upper, C [B, S, K], method, bound_upper) -> (lb, ub)``
* ``certify(model, x_lower, x_upper, labels, method, ibp_first=False) -> BoolTensor [B]``
* ``ibp_first_margin_lower_bounds(model, x_lower, x_upper, labels, method) -> [B, K]``: the
  certification cascade per margin (IBP everywhere, <method> only where IBP fails)
* ``worst_case_logits(margins) -> -margins``, ``worst_case_cross_entropy(margins, labels=None)``

Through the camera (``a5ocr.bounds.camera``: the print attack ||dw||_inf <= eps_print on the
glyph w [B, *glyph], with the image attack eps_a, for B fixed acquisitions ``params``):

* ``camera_margin_lower_bounds(model, w, params, cfg, labels, eps_print, eps_a, method, f=None,
  k=None, sound=False) -> [B, K]`` (training: differentiable; ``sound``: float64)
* ``certify_print(model, w, params, cfg, labels, eps_print, eps_a, method, ibp_first=False) -> BoolTensor [B]``
* ``camera_net(model, params, cfg, glyph_shape, image_attack)``, ``print_box(w, eps_print, eps_a, image_shape)``
"""

from a5ocr.bounds.api import (
    certify,
    compute_bounds,
    ibp_first_margin_lower_bounds,
    margin_lower_bounds,
    margin_spec,
    mixed_margin_lower_bounds,
    robust_loss,
    robust_loss_and_margins,
    robust_margins,
)
from a5ocr.bounds.camera import CameraAffine, camera_margin_lower_bounds, camera_net, certify_print, print_box
from a5ocr.bounds.engine import METHODS, BoundedSequential
from a5ocr.bounds.layers import LAYER_RULES, BoundLayer, BoundReLU, ReLURelaxation, rule_for
from a5ocr.bounds.loss import worst_case_cross_entropy, worst_case_logits

__all__ = [
    "METHODS",
    "BoundedSequential",
    "BoundLayer",
    "BoundReLU",
    "CameraAffine",
    "LAYER_RULES",
    "ReLURelaxation",
    "camera_margin_lower_bounds",
    "camera_net",
    "certify",
    "certify_print",
    "compute_bounds",
    "ibp_first_margin_lower_bounds",
    "margin_lower_bounds",
    "margin_spec",
    "mixed_margin_lower_bounds",
    "print_box",
    "robust_loss",
    "robust_loss_and_margins",
    "robust_margins",
    "rule_for",
    "worst_case_cross_entropy",
    "worst_case_logits",
]
