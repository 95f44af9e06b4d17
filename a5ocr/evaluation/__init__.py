"""Evaluation on fresh random acquisitions: certificates, certified radius, attacks, reports."""

from a5ocr.evaluation.protocol import (  # noqa: F401
    ATTACKS,
    EvalResult,
    EvaluateError,
    Evaluation,
    acquisitions,
    cascade_names,
    certified_radius,
    certify_batch,
    check_options,
    evaluate,
    evaluate_full,
    evaluate_run,
    evaluate_samples,
    psnr_db,
    radius_cap,
    save_broken,
)
