"""Characters regrouped by recognition (``a5ocr scan``, step 4): pieces of one letter joined,
letters that touch split.

A character in pieces side by side (a defended glyph printed with a gap in a stroke: an h as
"ti", an x as "ie", or a loose piece blurred into the next letter) is regrouped first
(``join_broken``): two neighbours of which one reads badly are replaced by their union, or by
their union cut anew (in two, or into the 2-3 pieces that read best: a letter in two
components, each touching another letter, as the K of "PKZ"), when that reads better. Letters
that touch (ft, rt, vw ... after blur), or a letter and a punctuation mark (/W, K.), are then
split (``split_merged``): a character that reads badly -- low confidence, or an ink box or a
shape that does not fit the class read, or none of the source font's marks
(``split.read_score``) -- is cut where its pieces read better: at one column pair in the lows
of its ink profile (``_best_split``, whose pieces may share columns, as the fused crossbars of
ft), or at the cuts that the segmentation of ``split.best_segmentation`` finds, whichever
pieces read better. A correctly read single letter, however wide (W, m), reads well and is
never cut.
"""

from __future__ import annotations

import math

import numpy as np

from a5ocr.scan.geometry import PageGeometry, normalize_glyph
from a5ocr.scan.reader import Reader
from a5ocr.scan.segmentation import Glyph, Segmentation, measure
from a5ocr.scan.split import best_segmentation, cut_candidates, cut_pieces, read_score, read_scores


def _best_split(seg: Segmentation, reader: Reader, geo: PageGeometry, g: Glyph, lookahead: int) -> tuple[float, int, int]:
    """(score, a, b) of the best way to cut ``g`` in two (``cut_pieces``) -- or, with ``lookahead``,
    in up to three: a piece that reads badly and is wide enough for two letters (> 0.35 em)
    counts with its own best cut (tried for the 3 cuts nearest the other side's best). The left
    piece's cut b and the right piece's cut a are chosen apart, with an overlap of at most
    0.2 em and a gap of at most 0.05 em. The score of a split is its worst piece's. All
    candidate pieces are read in one batch. Score 0 when there is no cut."""
    em = reader.units_per_em / reader.units_per_pixel * geo.of(g)[0]
    cuts = cut_candidates(seg, reader, geo, g)
    lefts, rights, lcuts, rcuts = [], [], [], []
    for cut in cuts:
        pair = cut_pieces(seg, g, cut, cut)
        if pair is None:
            continue
        lefts.append(pair[0])
        rights.append(pair[1])
        lcuts.append(cut)
        rcuts.append(cut)
    if not lefts:
        return 0.0, 0, 0
    glyphs = lefts + rights
    canv = np.stack([normalize_glyph(seg, q, reader, *geo.of(q)) for q in glyphs])
    probs, _ = reader.classify(canv)
    scores = np.array([read_score(reader, geo, q, canv[i], probs[i]) for i, q in enumerate(glyphs)])
    sl, sr = scores[: len(lefts)], scores[len(lefts) :]
    lcuts_a, rcuts_a = np.array(lcuts), np.array(rcuts)
    if lookahead > 0:
        for side, other_best in ((sr, lcuts_a[int(np.argmax(sl))]), (sl, rcuts_a[int(np.argmax(sr))])):
            pieces = rights if side is sr else lefts
            cut_pos = rcuts_a if side is sr else lcuts_a
            for i in np.argsort(np.abs(cut_pos - other_best))[:3]:
                q = pieces[i]
                if side[i] < 0.9 and q.right - q.left > 0.35 * em:
                    side[i] = max(side[i], _best_split(seg, reader, geo, q, 0)[0])
    a = rcuts_a[None, :]
    b = lcuts_a[:, None]
    allowed = (b - a <= 0.2 * em) & (a - b <= 0.05 * em)
    pair = np.where(allowed, np.minimum(sl[:, None], sr[None, :]), -1.0)
    i, j = np.unravel_index(int(np.argmax(pair)), pair.shape)
    if pair[i, j] < 0:
        return 0.0, 0, 0
    return float(pair[i, j]), int(rcuts_a[j]), int(lcuts_a[i])


def split_merged(seg: Segmentation, reader: Reader, geo: PageGeometry, canv: np.ndarray, probs: np.ndarray,
                 max_pieces: int = 4) -> bool:
    """Split characters that touch (the module doc): a character that reads badly (``read_score``
    below 0.9) is cut at a column (``cut_candidates``) when
    the pieces read better than the whole (and at least 0.3; with one level of lookahead, so
    that three letters in one blob are found); pieces are tried again, up to ``max_pieces``."""
    changed = False
    queue = [(g, read_score(reader, geo, g, canv[i], probs[i]), 1) for i, g in enumerate(seg.glyphs)]
    while queue:
        g, whole, pieces = queue.pop()
        if whole >= 0.9 or pieces >= max_pieces:
            continue
        score, a, b = _best_split(seg, reader, geo, g, lookahead=1 if pieces + 1 < max_pieces else 0)
        path, s_path = best_segmentation(seg, reader, geo, g, max_pieces - pieces + 1)
        if path and min(s_path) > max(score, whole, 0.5) and math.prod(s_path) > whole:  # an l is not two half-l's
            new, s_new = path, s_path
        elif score > max(whole, 0.3):
            new = list(cut_pieces(seg, g, a, b))
            s_new = read_scores(seg, reader, geo, new)
        else:
            continue
        line = seg.lines[g.line]
        i = next(j for j, q in enumerate(line) if q is g)
        line[i : i + 1] = new
        queue += [(q, sq, pieces + len(new) - 1) for q, sq in zip(new, s_new)]
        changed = True
    return changed


def _joined(seg: Segmentation, a: Glyph, b: Glyph) -> Glyph:
    """One character made of the neighbours ``a`` and ``b`` (whole characters, not split pieces)."""
    box = (min(a.box[0], b.box[0]), min(a.box[1], b.box[1]), max(a.box[2], b.box[2]), max(a.box[3], b.box[3]))
    u = Glyph(comps=a.comps + b.comps, box=box, line=a.line)
    measure(seg, u)
    return u


def _regrouping(seg: Segmentation, reader: Reader, geo: PageGeometry, u: Glyph, su: float, floor: float) -> tuple:
    """(gain over ``floor``, characters, their scores) of the best regrouping of two neighbours
    whose union is ``u`` (read at ``su``): the union itself, the union cut again in two at its
    best column (``_best_split``), or cut into the 2-3 pieces that read best (``best_segmentation``:
    a letter in two components, each touching another letter, as K in PKZ)."""
    move = (su - floor, [u], [su])
    s_cut, c_a, c_b = _best_split(seg, reader, geo, u, lookahead=0)
    pair = cut_pieces(seg, u, c_a, c_b) if s_cut > move[0] + floor else None
    if pair is not None:
        s_pair = read_scores(seg, reader, geo, list(pair))
        if min(s_pair) - floor > move[0]:
            move = (min(s_pair) - floor, list(pair), s_pair)
    path, s_path = best_segmentation(seg, reader, geo, u, max_pieces=3)
    if path and min(s_path) - floor > move[0] and math.prod(s_path) > su:
        move = (min(s_path) - floor, path, s_path)
    return move


def join_broken(seg: Segmentation, reader: Reader, geo: PageGeometry, canv: np.ndarray, probs: np.ndarray,
                max_gap_em: float = 0.08, max_parts: int = 4) -> bool:
    """Regroup neighbours that are one character in pieces (the module doc) -- the converse
    of ``split_merged``. A defended glyph may print in pieces that do not touch (an h whose stem
    and arch are apart reads "ti", an x of two strokes "ie"), and a piece may touch the next
    letter instead (the loose leg of an x blurred into the e before it). For two neighbours on a
    line, whole characters less than ``max_gap_em`` em apart (or overlapping) of which one reads
    badly (``read_score`` < 0.9), two regroupings are read: their union as one character, and their
    union cut again in two at its best column (``_best_split``). The better one replaces the
    pair when its worst character reads better than the pair's worse one and at least 0.5; the
    best move of a line is taken first and the line tried again, a character being made of at
    most ``max_parts`` pieces. Pieces of a split are never regrouped."""
    changed = False
    index = {id(g): i for i, g in enumerate(seg.glyphs)}
    scores = {id(g): read_score(reader, geo, g, canv[index[id(g)]], probs[index[id(g)]]) for g in seg.glyphs}
    parts = {id(g): 1 for g in seg.glyphs}
    best: dict = {}  # (id a, id b) -> (gain, new characters, their scores) of a pair already read
    keep = list(seg.glyphs)  # every character the dicts' ids refer to stays alive (ids are not reused)
    for line in seg.lines:
        while True:
            fresh = []
            for a, b in zip(line, line[1:]):
                if (id(a), id(b)) in best or a.cols is not None or b.cols is not None:
                    continue
                em = reader.units_per_em / reader.units_per_pixel * geo.of(a)[0]
                if (parts[id(a)] + parts[id(b)] > max_parts or min(scores[id(a)], scores[id(b)]) >= 0.9
                        or b.left - a.right > max_gap_em * em):
                    best[(id(a), id(b))] = (0.0, [], [])  # two pieces that each read plausibly stay two
                    continue
                fresh.append((a, b))
            if fresh:
                unions = [_joined(seg, a, b) for a, b in fresh]
                keep += unions
                for (a, b), u, su in zip(fresh, unions, read_scores(seg, reader, geo, unions)):
                    move = _regrouping(seg, reader, geo, u, su, max(min(scores[id(a)], scores[id(b)]), 0.5))
                    keep += move[1]
                    best[(id(a), id(b))] = move
            pairs = [(best.get((id(a), id(b)), (0.0, [], [])), i) for i, (a, b) in enumerate(zip(line, line[1:]))]
            if not pairs:
                break
            (gain, new, s_new), i = max(pairs, key=lambda m: m[0][0])
            if gain <= 0:
                break
            n_parts = parts[id(line[i])] + parts[id(line[i + 1])]
            for q, sq in zip(new, s_new):
                scores[id(q)] = sq
                parts[id(q)] = n_parts
            line[i : i + 2] = new
            changed = True
    return changed

