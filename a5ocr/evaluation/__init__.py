"""Evaluation on fresh random acquisitions: certificates, certified radius, attacks, reports.

Modules: ``certify`` (sound certificates, the cascade, the certified radius), ``protocol``
(acquisitions, the one evaluation loop ``evaluate_samples`` and the entry points built on it),
``report`` (``EvalResult``, ``Evaluation`` and its report, PSNR, broken-certificate records) and
the subpackage ``attacks`` (PGD, APGD, APGD-T and the attack suite).
"""

from a5ocr.errors import EvaluateError
from a5ocr.evaluation.certify import cascade_names, certified_radius, certify_batch, radius_cap
from a5ocr.evaluation.protocol import (
    ATTACKS,
    acquisitions,
    check_options,
    evaluate,
    evaluate_full,
    evaluate_run,
    evaluate_samples,
)
from a5ocr.evaluation.report import EvalResult, Evaluation, psnr_db, save_broken

__all__ = [
    "ATTACKS",
    "EvalResult",
    "EvaluateError",
    "Evaluation",
    "acquisitions",
    "cascade_names",
    "certified_radius",
    "certify_batch",
    "check_options",
    "evaluate",
    "evaluate_full",
    "evaluate_run",
    "evaluate_samples",
    "psnr_db",
    "radius_cap",
    "save_broken",
]
