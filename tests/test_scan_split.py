"""``a5ocr scan`` cuts characters that touch by recognition (``a5ocr.scan.split``): a letter
touching a punctuation mark or another letter is read as its own character, a wide single
letter (W, m) stays whole, and a piece of a split is certified only when it is read right.

One tiny design run (8 characters with the wide W and m, 32x32, seconds) is shared by the
module; pages are read with a nearest-prototype classifier on its robust glyphs as printed (a
near-perfect reader of clean pages in the exported font, as in ``tests/test_scan.py``), so that
what is tested is the segmentation, not the briefly trained classifier."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SPLIT_CHARS
from a5ocr import scan as sc
from a5ocr.scan.geometry import fit_geometry
from a5ocr.scan.regroup import join_broken, split_merged
from a5ocr.scan.render_text import RenderOptions, render_text
from a5ocr.scan.result import compare_with_truth, scan_chars
from test_scan import _template_reader  # the nearest-prototype reader of tests/test_scan.py

CHARS = SPLIT_CHARS  # the characters of the shared split_run (conftest)
TOUCHING = "F/W.K P/V:b fb/W\nPK/W VK.W fm/P"


@pytest.fixture(scope="module")
def run(split_run):
    """A tiny design of CHARS on a 32 px canvas (conftest: trained in the background)."""
    return split_run


@pytest.fixture(scope="module")
def font(run):
    """The run's robust font, exported beside it as RUN/a5.ttf."""
    return run / "a5.ttf"


@pytest.fixture(scope="module")
def reader(run):
    return _template_reader(sc.load_reader(run))


def _regrouped(gray, reader):
    """The page's characters after the regrouping steps of ``scan_text`` (segment, geometry, join, split)."""
    seg = sc.segment(gray)
    geo, canv, probs = fit_geometry(seg, reader)
    if join_broken(seg, reader, geo, canv, probs):
        geo, canv, probs = fit_geometry(seg, reader, geo, max_rounds=2)
    split_merged(seg, reader, geo, canv, probs)
    return seg


@pytest.fixture(scope="module")
def touching(font):
    """``TOUCHING`` printed at 9 pt, 300 dpi, degraded by render-text (seed 2): the ink spread of
    the small size makes neighbours touch (fewer components than characters, checked), and the
    page read against its truth."""
    gray, truth = render_text(TOUCHING, font, RenderOptions(size_pt=9.0, width_in=6.0, margin_in=0.4, seed=2))
    assert len(sc.segment(gray).glyphs) <= len(truth["chars"]) - 4  # at least four pairs merged
    return gray, truth


@pytest.fixture(scope="module")
def touching_read(touching, reader):
    gray, truth = touching
    return compare_with_truth(sc.scan_text(gray, reader, 0.02, "ibp"), truth["text"], "test")


def test_the_reader_holds_the_source_fonts_marks_on_the_canvas(reader):
    """The marks are framed as the designed glyphs: the full stop sits on the baseline, the
    hyphen in the x-height, the slash spans the letters' rows; a colon also counts with each dot."""
    m = reader.marks
    assert m is not None and set(m["chars"]) == set("-/.:,;")
    dot, hyphen, slash = (m["chars"].index(c) for c in ".-/")
    assert abs(m["bottom"][dot] - reader.baseline) < 0.5
    assert m["top"][hyphen] > reader.baseline - 0.6 * reader.tallest_above_baseline
    assert m["bottom"][hyphen] < reader.baseline - 0.2 * reader.tallest_above_baseline
    assert m["top"][slash] < reader.baseline - 0.8 * reader.tallest_above_baseline
    assert m["chars"].count(":") == 3  # the colon and each of its two dots


def test_letters_touching_marks_and_letters_are_split_and_read(reader, touching, touching_read):
    """Letters merged with a slash, a full stop, a colon or another letter are cut apart by
    recognition: every designed letter is read right, and the marks are not read as letters."""
    seg = _regrouped(touching[0], reader)
    assert any(g.cols is not None for g in seg.glyphs)  # some characters are pieces of a split
    letters = [c.char for c in touching_read.chars if not c.outside_alphabet]
    assert "".join(letters) == "".join(c for c in TOUCHING if c in CHARS)
    assert any(c.split for c in touching_read.chars)  # and the scan's record says which


def test_a_split_piece_is_certified_only_when_right(touching_read):
    """On the page of touching letters and marks, compared with its truth: no character is
    certified but wrong, no mark is certified, and the letters (split pieces among them: the
    certificate covers each normalised piece as any character) are certified."""
    counts = touching_read.counts()
    assert counts["certified_wrong"] == 0
    assert not any(c.certified for c in touching_read.chars if c.outside_alphabet)
    assert counts["certified_correct"] == sum(c in CHARS for c in TOUCHING)


@pytest.mark.parametrize("seed", [0, 2])
def test_wide_single_letters_are_not_split(reader, font, seed):
    """W, m, V and b standing alone, printed at 9 pt and degraded by render-text as the touching
    page is, are each read whole: no character is a piece of a split."""
    text = "W m V b\nm W b V W"
    gray, truth = render_text(text, font, RenderOptions(size_pt=9.0, width_in=6.0, margin_in=0.4, seed=seed))
    seg = _regrouped(gray, reader)
    assert [g.cols for g in seg.glyphs] == [None] * len(truth["chars"])
    assert sc.scan_text(gray, reader, 0.02, "ibp").text == truth["text"]


def test_the_json_says_which_characters_are_pieces_of_a_split(reader):
    """``scan_chars``'s ``split`` flags reach each character's JSON; without them, none is."""
    r = reader.resolution
    w = np.zeros((2, r, r), np.float32)
    probs, x = reader.classify(w)
    flagged = scan_chars(reader, probs, x, 0.02, "ibp", [[0, 0, 1, 1]] * 2, [0, 0], [False, False], split=[True, False])
    assert [c.to_dict()["split"] for c in flagged] == [True, False]
    plain = scan_chars(reader, probs, x, 0.02, "ibp", [[0, 0, 1, 1]] * 2, [0, 0], [False, False])
    assert [c.to_dict()["split"] for c in plain] == [False, False]
