"""Every user-facing error of a5ocr, under one base.

``A5Error`` is what the command line catches (once): its message is shown as one red line and
the command exits with code 2, never with a traceback. Each stage raises its own subclass, so a
caller can tell a font problem from a corrupt run folder; all of them are ``ValueError``s, as
they were before the hierarchy existed.
"""

from __future__ import annotations


class A5Error(ValueError):
    """A user error (bad argument, missing or corrupt file, incompatible run): one line, exit 2."""


class GlyphError(A5Error):
    """A font that cannot give the asked glyphs (missing file, corrupt file, missing characters)."""


class CheckpointError(A5Error):
    """A classifier file that is missing, corrupt, or does not fit the asked setup."""


class DesignError(A5Error):
    """A design request that cannot run (bad argument, incompatible resume, ...)."""


class CollapseError(A5Error, RuntimeError):
    """Certified training collapsed the classifier to a constant output."""


class EvaluateError(A5Error):
    """A user error of ``a5ocr evaluate`` / ``a5ocr reproduce`` (missing or corrupt run,
    bad option)."""


class ExportError(A5Error):
    """An export that cannot be made (missing run or designs, bad output path, bad option)."""


class RobustifyError(A5Error):
    """A user error of ``a5ocr robustify`` (bad option, dataset, classifier or run folder)."""


class DatasetError(RobustifyError):
    """An image dataset that cannot be read or has the wrong layout."""


class ScanError(A5Error):
    """A user error of ``a5ocr scan`` / ``a5ocr render-text`` (unreadable page, missing or corrupt
    run, bad option)."""


class PageError(ScanError):
    """A page that cannot be read or written (not an image, too large, corrupt, unsupported format)."""


class RenderError(ScanError):
    """A page that cannot be rendered (missing font, characters the font lacks, bad option)."""


class RunError(A5Error):
    """A run folder that is missing, incomplete or corrupt (or a classifier that does not fit it)."""


class CertifyRangeError(A5Error):
    """A user error of ``a5ocr certify-range`` (bad option, missing or corrupt run)."""


def check_in_unit_interval(value: float, flag: str, error: type[A5Error] = A5Error, *, closed_top: bool = False) -> None:
    """The one range check of a budget (eps_A, eps_D, ...): ``value`` in (0, 1), or (0, 1] with
    ``closed_top``; otherwise ``error("<flag> must be in (0, 1), got <value>")``. NaN and inf fail."""
    ok = 0.0 < value <= 1.0 if closed_top else 0.0 < value < 1.0
    if not ok:
        raise error(f"{flag} must be in (0, {'1]' if closed_top else '1)'}, got {value}")
