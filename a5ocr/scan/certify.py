"""Certificates of the characters read (``a5ocr scan``, step 6).

Each character's label is the classifier's answer; it is certified when the sound float64 bound
(``a5ocr.evaluation.certify_batch``; IBP first, then, with ``method="crown-ibp"``, CROWN-IBP
on the margins IBP left unproven of the rest) proves that no change of L-inf size eps_A of its normalised image
changes that answer. Its radius is the largest such size, found by the evaluation stage's
``certified_radius`` (IBP bisection up to ``radius_cap(eps_A)`` = min(1, max(0.5, 2 eps_A)), each
step a float64 proof; at least eps_A where certified). The certificate is about the classifier's
input. With the segmentation and the fitted geometry held fixed, the chain from the page is an
average (bilinear deskew, box re-binning) followed by the level stretch 1 / (paper - ink), so a
change of size e of the page's pixels moves the input by at most e / (paper - ink):
``page_eps_a`` = eps_A (paper - ink) in the JSON. Segmentation and the geometry fit are not
covered.
"""

from __future__ import annotations


import numpy as np
import torch

from a5ocr.errors import ScanError, check_in_unit_interval
from a5ocr.evaluation import certified_radius, certify_batch

METHODS = ("ibp", "crown-ibp")


def check_options(eps_a: float, method: str) -> None:
    """The budget is in (0, 1) and the method one of ``METHODS`` (else ``ScanError``)."""
    if not isinstance(eps_a, (int, float)):
        raise ScanError(f"--eps-a must be in (0, 1), got {eps_a}")
    check_in_unit_interval(eps_a, "--eps-a", ScanError)
    if method not in METHODS:
        raise ScanError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")


def certify_canvases(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, eps_a: float, method: str,
                     radius_steps: int = 10, cap: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sound float64 certificates at eps_a and certified radii of inputs x [n, 3, R, R] for ``labels``.

    IBP first; with ``method="crown-ibp"`` CROWN-IBP proves what IBP leaves. The radius is
    ``a5ocr.evaluation.certified_radius`` of every input for its own label: it searches [eps_a,
    cap] (cap default ``radius_cap(eps_a)`` = min(1, max(0.5, 2 eps_a)); a radius equal to the cap
    means "at least") for the certified inputs and [0, eps_a) for the others, every radius
    reported a float64 proof (or eps_a, proven above, or 0).
    Returns (certified [n] bool, radius [n] float)."""
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, bool), np.zeros(0)
    cert = certify_batch(model, x, labels, eps_a, "ibp")
    if method == "crown-ibp" and (~cert).any():
        rest = torch.nonzero(~cert).flatten()
        cert[rest] = certify_batch(model, x[rest], labels[rest], eps_a, "crown-ibp", ibp_first=True)
    everyone = torch.ones(n, dtype=torch.bool)  # each input is "correct" for the label it was read as
    radius = certified_radius(model, x, labels, cert, everyone, eps_a, steps=radius_steps, cap=cap)
    return cert.numpy(), radius.numpy()
