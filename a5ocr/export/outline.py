"""Raster -> outline: closed polygons around the ink of a glyph image, for font export.

Two tracers, both numpy, both returning closed loops with one orientation rule
(ink on the right of the direction of travel once y points up, so outer contours run
clockwise and holes counter-clockwise: the TrueType convention):

* ``trace_level(f, level)``: marching squares on a grid of samples ``f`` [H, W] at the
  iso-level ``level``; crossing points are interpolated linearly along the grid lines, so for
  a bilinear image sampled on a finer grid they lie exactly on the bilinear iso-line. Saddle
  cells are resolved with the cell's centre value (the bilinear value there).
* ``trace_pixels(mask)``: the exact boundary of the union of the True pixels of ``mask``
  [H, W] (pixel (r, c) is the square [c, c+1] x [r, r+1]); two pixels touching only at a
  corner give two loops touching at that point.

Loops are [n, 2] float arrays of (x, y) in image coordinates (x right, y down), without the
closing point repeated. ``simplify`` removes collinear points (Ramer-Douglas-Peucker with a
tolerance), ``bilinear_upsample`` samples the bilinear interpolant of a pixel image.
"""

from __future__ import annotations

import numpy as np

# Corners of a marching-squares cell (x, y), image coordinates, and the bit of each.
_CORNERS = {"tl": (0.0, 0.0), "tr": (1.0, 0.0), "br": (1.0, 1.0), "bl": (0.0, 1.0)}
_BITS = {"tl": 1, "tr": 2, "br": 4, "bl": 8}
# Cell edges and their midpoints; a corner's two edges.
_EDGE_MID = {"T": (0.5, 0.0), "R": (1.0, 0.5), "B": (0.5, 1.0), "L": (0.0, 0.5)}
_CORNER_EDGES = {"tl": ("T", "L"), "tr": ("T", "R"), "br": ("R", "B"), "bl": ("B", "L")}
_OPPOSITE = {"tl": "br", "tr": "bl", "br": "tl", "bl": "tr"}


def _orient(e1: str, e2: str, ink: tuple[float, float]) -> tuple[str, str]:
    """Order the segment e1-e2 so that the point ``ink`` lies on its right once y points up.

    In image coordinates (y down) that is: cross(q - p, ink - p) > 0.
    """
    p, q = np.array(_EDGE_MID[e1]), np.array(_EDGE_MID[e2])
    d, c = q - p, np.array(ink) - p
    cross = d[0] * c[1] - d[1] * c[0]
    return (e1, e2) if cross > 0 else (e2, e1)


def _build_table() -> dict[tuple[int, bool], list[tuple[str, str]]]:
    """(case, centre inside) -> oriented segments (from edge, to edge) of a cell."""
    table: dict[tuple[int, bool], list[tuple[str, str]]] = {}
    for case in range(16):
        inside = [c for c, b in _BITS.items() if case & b]
        for centre in (False, True):
            segs: list[tuple[str, str]] = []
            if len(inside) == 1:
                c = inside[0]
                segs.append(_orient(*_CORNER_EDGES[c], _CORNERS[c]))
            elif len(inside) == 3:
                c = next(k for k in _BITS if k not in inside)
                segs.append(_orient(*_CORNER_EDGES[c], _CORNERS[_OPPOSITE[c]]))
            elif len(inside) == 2 and _OPPOSITE[inside[0]] == inside[1]:  # saddle
                if centre:  # the inside corners are connected: cut off the outside ones
                    for c in (k for k in _BITS if k not in inside):
                        segs.append(_orient(*_CORNER_EDGES[c], (0.5, 0.5)))
                else:  # cut off each inside corner
                    for c in inside:
                        segs.append(_orient(*_CORNER_EDGES[c], _CORNERS[c]))
            elif len(inside) == 2:
                crossed = [e for e in "TRBL" if sum(e in _CORNER_EDGES[c] for c in inside) == 1]
                segs.append(_orient(crossed[0], crossed[1], _CORNERS[inside[0]]))
            table[(case, centre)] = segs
    return table


_TABLE = _build_table()


def _chain(succ: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
    """Follow ``succ`` (node -> next node, -1 = none) from every node in ``starts``; closed loops of node ids."""
    seen = np.zeros(succ.shape[0], bool)
    loops = []
    for s in starts:
        if seen[s]:
            continue
        loop = []
        n = int(s)
        while not seen[n]:
            seen[n] = True
            loop.append(n)
            n = int(succ[n])
            if n < 0:
                raise RuntimeError("open contour while tracing (grid border not below the level?)")
        loops.append(np.array(loop, dtype=np.int64))
    return loops


def trace_level(f: np.ndarray, level: float = 0.5) -> list[np.ndarray]:
    """Closed iso-contours of ``{f > level}`` for samples ``f`` [H, W] (node (i, j) at x=j, y=i).

    The border of ``f`` must be at most ``level`` (pad with paper first), so every contour closes.
    Returns loops [n, 2] of (x, y) in grid units; outer contours clockwise, holes
    counter-clockwise, with y pointing up (see the module docstring).
    """
    f = np.asarray(f, dtype=np.float64)
    h, w = f.shape
    if h < 2 or w < 2:
        return []
    if (f[0] > level).any() or (f[-1] > level).any() or (f[:, 0] > level).any() or (f[:, -1] > level).any():
        raise ValueError("trace_level: the border of the grid must be at or below the level")
    ins = f > level
    tl, tr, br, bl = ins[:-1, :-1], ins[:-1, 1:], ins[1:, 1:], ins[1:, :-1]
    case = tl * 1 + tr * 2 + br * 4 + bl * 8
    centre = (f[:-1, :-1] + f[:-1, 1:] + f[1:, 1:] + f[1:, :-1]) / 4.0 > level
    # Edge ids: horizontal edge (i, j)-(i, j+1) -> i*(w-1)+j; vertical (i, j)-(i+1, j) -> nh + i*w + j.
    nh = h * (w - 1)
    n_edges = nh + (h - 1) * w
    ii, jj = np.meshgrid(np.arange(h - 1), np.arange(w - 1), indexing="ij")
    edge_of = {
        "T": ii * (w - 1) + jj,
        "B": (ii + 1) * (w - 1) + jj,
        "L": nh + ii * w + jj,
        "R": nh + ii * w + jj + 1,
    }
    succ = np.full(n_edges, -1, dtype=np.int64)
    for (cs, cen), segs in _TABLE.items():
        if not segs:
            continue
        sel = (case == cs) & (centre == cen)
        if not sel.any():
            continue
        for e_from, e_to in segs:
            succ[edge_of[e_from][sel]] = edge_of[e_to][sel]
    starts = np.nonzero(succ >= 0)[0]
    # Crossing point of every edge (only the used ones matter).
    pts = np.zeros((n_edges, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        a, b = f[:, :-1], f[:, 1:]
        t = np.clip((level - a) / (b - a), 0.0, 1.0)
        hi, hj = np.meshgrid(np.arange(h), np.arange(w - 1), indexing="ij")
        pts[:nh, 0] = (hj + t).ravel()
        pts[:nh, 1] = hi.ravel()
        a, b = f[:-1, :], f[1:, :]
        t = np.clip((level - a) / (b - a), 0.0, 1.0)
        vi, vj = np.meshgrid(np.arange(h - 1), np.arange(w), indexing="ij")
        pts[nh:, 0] = vj.ravel()
        pts[nh:, 1] = (vi + t).ravel()
    return [pts[loop] for loop in _chain(succ, starts)]


def trace_pixels(mask: np.ndarray) -> list[np.ndarray]:
    """Exact boundary loops of the True pixels of ``mask`` [H, W] (pixel (r, c) = [c, c+1] x [r, r+1]).

    Same orientation rule as ``trace_level``; only the corners of the boundary are kept.
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    h, w = m.shape  # padded; vertex (x, y) with x in [0, w], y in [0, h] -> id y*(w+1)+x
    nv = (h + 1) * (w + 1)
    # Directed unit edges with the ink on the right (y up) == cross(d, ink - p) > 0 in image coords.
    froms, tos = [], []
    # Vertical boundaries at x = c between pixel (r, c-1) and (r, c).
    left, right = m[:, :-1], m[:, 1:]
    r, c = np.nonzero(left & ~right)  # ink on the left (x smaller): walk down (y increasing)
    froms.append(r * (w + 1) + (c + 1)); tos.append((r + 1) * (w + 1) + (c + 1))
    r, c = np.nonzero(~left & right)  # ink on the right: walk up
    froms.append((r + 1) * (w + 1) + (c + 1)); tos.append(r * (w + 1) + (c + 1))
    # Horizontal boundaries at y = r between pixel (r-1, c) and (r, c).
    top, bottom = m[:-1, :], m[1:, :]
    r, c = np.nonzero(top & ~bottom)  # ink above (y smaller): walk left (x decreasing)
    froms.append((r + 1) * (w + 1) + (c + 1)); tos.append((r + 1) * (w + 1) + c)
    r, c = np.nonzero(~top & bottom)  # ink below: walk right
    froms.append((r + 1) * (w + 1) + c); tos.append((r + 1) * (w + 1) + (c + 1))
    fr, to = np.concatenate(froms), np.concatenate(tos)
    if fr.size == 0:
        return []
    # A vertex has one outgoing edge, or two at a diagonal (saddle) vertex. Chain edges (not
    # vertices): after arriving along d, take the outgoing edge turning towards the ink (right
    # turn in y-up = cross(d, d') > 0 in image coordinates), which keeps loops apart.
    order = np.argsort(fr, kind="stable")
    fr_s, to_s = fr[order], to[order]
    first = np.searchsorted(fr_s, np.arange(nv))
    count = np.bincount(fr_s, minlength=nv)

    def xy(v: np.ndarray) -> np.ndarray:
        return np.stack([v % (w + 1), v // (w + 1)], axis=-1)

    d_all = xy(to_s) - xy(fr_s)
    succ = np.empty(fr_s.size, dtype=np.int64)
    for e in range(fr_s.size):
        v = to_s[e]
        k0, n = first[v], count[v]
        if n == 1:
            succ[e] = k0
        else:
            d = d_all[e]
            best = k0
            for k in range(k0, k0 + n):
                dn = d_all[k]
                if d[0] * dn[1] - d[1] * dn[0] > 0:
                    best = k
            succ[e] = best
    loops = []
    for idx in _chain(succ, np.arange(fr_s.size)):
        pts = xy(fr_s[idx]).astype(np.float64) - 1.0  # undo the padding
        loops.append(pts)
    return [simplify(p, 0.0) for p in loops]


def signed_area(loop: np.ndarray) -> float:
    """Shoelace area of a closed loop [n, 2]; positive = counter-clockwise in a y-up frame."""
    x, y = loop[:, 0], loop[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _rdp_open(pts: np.ndarray, tol: float) -> np.ndarray:
    """Ramer-Douglas-Peucker on an open polyline [n, 2]; keeps both ends. Iterative."""
    n = len(pts)
    keep = np.zeros(n, bool)
    keep[0] = keep[-1] = True
    stack = [(0, n - 1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        seg = pts[b] - pts[a]
        rel = pts[a + 1 : b] - pts[a]
        length = float(np.hypot(*seg))
        if length == 0.0:
            dist = np.hypot(rel[:, 0], rel[:, 1])
        else:
            dist = np.abs(seg[0] * rel[:, 1] - seg[1] * rel[:, 0]) / length
        k = int(np.argmax(dist))
        if dist[k] > tol:
            m = a + 1 + k
            keep[m] = True
            stack.append((a, m))
            stack.append((m, b))
    return pts[keep]


def simplify(loop: np.ndarray, tol: float) -> np.ndarray:
    """Drop points of a closed loop that lie within ``tol`` of the simplified outline.

    ``tol = 0`` removes exactly collinear points and repeated points only.
    """
    pts = np.asarray(loop, dtype=np.float64)
    if len(pts) < 3:
        return pts
    # drop repeated consecutive points
    nxt = np.roll(pts, -1, axis=0)
    pts = pts[np.any(pts != nxt, axis=1)]
    if len(pts) < 3:
        return pts
    # split the closed loop at point 0 and the point farthest from it
    far = int(np.argmax(np.hypot(*(pts - pts[0]).T)))
    first = _rdp_open(pts[: far + 1], tol)
    second = _rdp_open(np.vstack([pts[far:], pts[:1]]), tol)
    return _drop_collinear(np.vstack([first, second[1:-1]]))


def _drop_collinear(pts: np.ndarray) -> np.ndarray:
    """Remove repeated points and points on a straight line between their neighbours (cyclic)."""
    changed = True
    while changed and len(pts) >= 3:
        prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
        a, b = pts - prev, nxt - pts
        cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
        dot = a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1]
        drop = (np.all(a == 0, axis=1)) | ((cross == 0) & (dot > 0))
        if drop.any():
            # never drop two neighbours in one pass (their test used each other)
            idx = np.nonzero(drop)[0]
            keep_drop = np.ones(idx.size, bool)
            keep_drop[1:] = np.diff(idx) > 1
            if idx.size > 1 and idx[0] == 0 and idx[-1] == len(pts) - 1:
                keep_drop[-1] = False
            mask = np.ones(len(pts), bool)
            mask[idx[keep_drop]] = False
            pts = pts[mask]
        changed = bool(drop.any())
    return pts


def bilinear_upsample(w: np.ndarray, factor: int) -> tuple[np.ndarray, float, float]:
    """Sample the bilinear interpolant of a pixel image on a grid ``factor`` times finer.

    ``w`` [R, C]: value of pixel (r, c) at its centre (c + 0.5, r + 0.5); outside the image the
    value is 0 (one pixel of 0 is padded on every side). Returns ``(f, x0, step)``: ``f``
    [(R+1)*factor+1, (C+1)*factor+1]; grid node (i, j) sits at image coordinates
    (x0 + j*step, x0 + i*step), with x0 = -0.5 and step = 1/factor, so the border is 0 and
    every pixel centre is a node.
    """
    if factor < 1:
        raise ValueError("factor must be at least 1")
    p = np.pad(np.asarray(w, dtype=np.float64), 1)

    def interp_matrix(n_pix: int) -> np.ndarray:
        # nodes at padded-index coordinates k/factor, k = 0..(n_pix-1)*factor
        k = np.arange((n_pix - 1) * factor + 1)
        pos = k / factor
        lo = np.minimum(np.floor(pos).astype(int), n_pix - 2)
        frac = pos - lo
        m = np.zeros((k.size, n_pix))
        m[k, lo] = 1.0 - frac
        m[k, lo + 1] += frac
        return m

    my, mx = interp_matrix(p.shape[0]), interp_matrix(p.shape[1])
    return my @ p @ mx.T, -0.5, 1.0 / factor
