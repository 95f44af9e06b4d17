"""Characters regrouped by recognition (``a5ocr scan``, step 4): pieces of one letter joined,
letters that touch split.

A character in pieces side by side (a defended glyph printed with a gap in a stroke: an h as
"ti", an x as "ie", or a loose piece blurred into the next letter) is regrouped first
(``join_broken``): two neighbours of which one reads badly are replaced by their union, or by
their union cut anew, when that reads better. Letters that touch (ft, rt, vw ... after blur) are
then split (``split_merged``): a character that reads badly -- low confidence, or an ink box or a
shape that does not fit the class read (``_score``) -- is cut at a column in the lows of its ink
profile when the pieces read better.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from a5ocr.scan.geometry import PageGeometry, normalize_glyph
from a5ocr.scan.ink import ink_extents
from a5ocr.scan.reader import Reader
from a5ocr.scan.segmentation import Glyph, Segmentation, glyph_window, isolated, measure, owned


def _plausible(rho: float) -> float:
    """How plausible an ink width ``rho`` times the prototype's is (1 within +-20%)."""
    d = abs(math.log(max(rho, 1e-6))) - 0.2
    return 1.0 if d <= 0 else math.exp(-((d / 0.15) ** 2))


def _score(reader: Reader, geo: PageGeometry, g: Glyph, canvas: np.ndarray, probs: np.ndarray) -> float:
    """How well a character is read: the confidence of the class read, times the plausibility of
    its ink for that class -- width on the page (within 20% of the prototype's), top and bottom
    on the normalised canvas (within 0.06 em), and the cosine similarity of the canvas to the
    prototype (>= 0.9; two touching letters read as one class match it at 0.3-0.6)."""
    t = reader.tables[geo.table or "robust"]
    y = int(np.argmax(probs))
    k, _ = geo.of(g)
    rho = (g.right - g.left) / max((t["right"][y] - t["left"][y]) * k, 1e-6)
    top, bottom = ink_extents(canvas.max(axis=1))
    if not math.isfinite(top):
        return 0.0
    em = reader.units_per_em / reader.units_per_pixel
    dev = max(abs(top - t["top"][y]), abs(bottom - t["bottom"][y])) / em - 0.06
    vertical = 1.0 if dev <= 0 else math.exp(-((dev / 0.06) ** 2))
    proto = t["glyphs"][y]
    cos = float((canvas * proto).sum() / max(math.sqrt(float((canvas**2).sum()) * float((proto**2).sum())), 1e-12))
    match = 1.0 if cos >= 0.9 else math.exp(-(((0.9 - cos) / 0.1) ** 2))
    return float(probs[y]) * _plausible(rho) * vertical * match


def _set_box(seg: Segmentation, g: Glyph) -> bool:
    """The mask box of ``g``'s own pixels; False when it has none."""
    xa, ya, xb, yb = win = glyph_window(seg, g)
    rows, cols = np.nonzero(owned(seg, g, win) & (seg.labels[ya:yb, xa:xb] > 0))
    if rows.size == 0:
        return False
    g.box = (xa + int(cols.min()), ya + int(rows.min()), xa + int(cols.max()) + 1, ya + int(rows.max()) + 1)
    return True


def _pieces(seg: Segmentation, g: Glyph, a: int, b: int) -> tuple[Glyph, Glyph] | None:
    """``g`` cut in two: the left piece keeps its columns < ``b``, the right one those >= ``a``
    (a < b: the columns between belong to both -- two crossbars fused into one, as in ft, tt;
    a > b: those between belong to neither). None when a piece has no ink."""
    c0, c1 = g.cols if g.cols is not None else (-(1 << 30), 1 << 30)
    left = Glyph(comps=list(g.comps), box=g.box, line=g.line, cols=(c0, min(c1, b)))
    right = Glyph(comps=list(g.comps), box=g.box, line=g.line, cols=(max(c0, a), c1))
    if not (_set_box(seg, left) and _set_box(seg, right)):
        return None
    measure(seg, left)
    measure(seg, right)
    return left, right


def _read(seg: Segmentation, reader: Reader, geo: PageGeometry, glyphs: list[Glyph]) -> list[float]:
    canv = np.stack([normalize_glyph(seg, q, reader, *geo.of(q)) for q in glyphs])
    probs, _ = reader.classify(canv)
    return [_score(reader, geo, q, canv[i], probs[i]) for i, q in enumerate(glyphs)]


def _cut_candidates(seg: Segmentation, reader: Reader, geo: PageGeometry, g: Glyph) -> list[int]:
    """Page columns where ``g`` may be two letters touching, at least 0.08 em from either end:
    up to 8 columns in the lows of its column ink profile (the joint of two letters is a single
    thin stroke) and 12 evenly spaced ones (a joint along a crossbar is a long low where the
    lowest columns need not be the right cut)."""
    k, _ = geo.of(g)
    min_w = 0.08 * reader.units_per_em / reader.units_per_pixel * k
    xa, ya, xb, yb = win = glyph_window(seg, g)
    prof = ndimage.gaussian_filter1d(isolated(seg, g, win).sum(axis=0).astype(np.float64), 1.0)
    lo, hi = int(math.ceil(g.left + min_w)) - xa, int(math.floor(g.right - min_w)) - xa
    if hi <= lo:
        return []
    inner = prof[lo:hi]
    lows = np.nonzero(inner <= inner.min() + 0.5 * (np.median(inner) - inner.min()))[0]
    if lows.size > 8:
        lows = lows[np.round(np.linspace(0, lows.size - 1, 8)).astype(int)]
    even = np.round(np.linspace(0, inner.size - 1, min(12, inner.size))).astype(int)
    return [xa + lo + int(m) for m in sorted(set(lows.tolist()) | set(even.tolist()))]


def _best_split(seg: Segmentation, reader: Reader, geo: PageGeometry, g: Glyph, lookahead: int) -> tuple[float, int, int]:
    """(score, a, b) of the best way to cut ``g`` in two (``_pieces``) -- or, with ``lookahead``,
    in up to three: a piece that reads badly and is wide enough for two letters (> 0.35 em)
    counts with its own best cut (tried for the 3 cuts nearest the other side's best). The left
    piece's cut b and the right piece's cut a are chosen apart, with an overlap of at most
    0.2 em and a gap of at most 0.05 em. The score of a split is its worst piece's. All
    candidate pieces are read in one batch. Score 0 when there is no cut."""
    em = reader.units_per_em / reader.units_per_pixel * geo.of(g)[0]
    cuts = _cut_candidates(seg, reader, geo, g)
    lefts, rights, lcuts, rcuts = [], [], [], []
    for cut in cuts:
        pair = _pieces(seg, g, cut, cut)
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
    scores = np.array([_score(reader, geo, q, canv[i], probs[i]) for i, q in enumerate(glyphs)])
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
    """Split characters that touch (the module doc): a character that reads badly (``_score``
    below 0.9) is cut at a column (``_cut_candidates``) when
    the pieces read better than the whole (and at least 0.3; with one level of lookahead, so
    that three letters in one blob are found); pieces are tried again, up to ``max_pieces``."""
    changed = False
    queue = [(g, _score(reader, geo, g, canv[i], probs[i]), 1) for i, g in enumerate(seg.glyphs)]
    while queue:
        g, whole, pieces = queue.pop()
        if whole >= 0.9 or pieces >= max_pieces:
            continue
        score, a, b = _best_split(seg, reader, geo, g, lookahead=1 if pieces + 1 < max_pieces else 0)
        if score <= max(whole, 0.3):
            continue
        left, right = _pieces(seg, g, a, b)
        line = seg.lines[g.line]
        i = next(j for j, q in enumerate(line) if q is g)
        line[i : i + 1] = [left, right]
        s_left, s_right = _read(seg, reader, geo, [left, right])
        queue += [(left, s_left, pieces + 1), (right, s_right, pieces + 1)]
        changed = True
    return changed


def _joined(seg: Segmentation, a: Glyph, b: Glyph) -> Glyph:
    """One character made of the neighbours ``a`` and ``b`` (whole characters, not split pieces)."""
    box = (min(a.box[0], b.box[0]), min(a.box[1], b.box[1]), max(a.box[2], b.box[2]), max(a.box[3], b.box[3]))
    u = Glyph(comps=a.comps + b.comps, box=box, line=a.line)
    measure(seg, u)
    return u


def join_broken(seg: Segmentation, reader: Reader, geo: PageGeometry, canv: np.ndarray, probs: np.ndarray,
                max_gap_em: float = 0.08, max_parts: int = 4) -> bool:
    """Regroup neighbours that are one character in pieces (the module doc) -- the converse
    of ``split_merged``. A defended glyph may print in pieces that do not touch (an h whose stem
    and arch are apart reads "ti", an x of two strokes "ie"), and a piece may touch the next
    letter instead (the loose leg of an x blurred into the e before it). For two neighbours on a
    line, whole characters less than ``max_gap_em`` em apart (or overlapping) of which one reads
    badly (``_score`` < 0.9), two regroupings are read: their union as one character, and their
    union cut again in two at its best column (``_best_split``). The better one replaces the
    pair when its worst character reads better than the pair's worse one and at least 0.5; the
    best move of a line is taken first and the line tried again, a character being made of at
    most ``max_parts`` pieces. Pieces of a split are never regrouped."""
    changed = False
    index = {id(g): i for i, g in enumerate(seg.glyphs)}
    scores = {id(g): _score(reader, geo, g, canv[index[id(g)]], probs[index[id(g)]]) for g in seg.glyphs}
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
                for (a, b), u, su in zip(fresh, unions, _read(seg, reader, geo, unions)):
                    floor = max(min(scores[id(a)], scores[id(b)]), 0.5)
                    move = (su - floor, [u], [su])
                    s_cut, c_a, c_b = _best_split(seg, reader, geo, u, lookahead=0)
                    pair = _pieces(seg, u, c_a, c_b) if s_cut > move[0] + floor else None
                    if pair is not None:
                        keep += pair
                        s_pair = _read(seg, reader, geo, list(pair))
                        if min(s_pair) - floor > move[0]:
                            move = (min(s_pair) - floor, list(pair), s_pair)
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

