"""A minimal lossless PDF writer for sheet pages.

Written here, not with PIL's PDF writer, because PIL stores grayscale pages as JPEG (lossy: it
changes the ink levels) and its page size is the pixel size rounded; ours is one lossless Flate
image per page and the MediaBox is the paper size in points exactly (A4 = 595.276 x 841.89 pt),
the image stretched onto it (scale error < 0.5 px per page).
"""

from __future__ import annotations

import zlib

import numpy as np

from a5ocr.export.common import MM_PER_INCH, PT_PER_INCH


def pdf_bytes(pages: list[np.ndarray], paper_mm: tuple[float, float]) -> bytes:
    """A minimal PDF 1.4: one lossless (Flate) DeviceGray image per page, MediaBox = paper in points."""
    w_pt = paper_mm[0] / MM_PER_INCH * PT_PER_INCH
    h_pt = paper_mm[1] / MM_PER_INCH * PT_PER_INCH
    objs: list[bytes] = []  # object i+1

    def add(body: bytes) -> int:
        objs.append(body)
        return len(objs)

    catalog = add(b"")  # placeholders, filled below
    pages_id = add(b"")
    kids = [_add_page(add, pages_id, arr, w_pt, h_pt) for arr in pages]
    objs[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id
    objs[pages_id - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    return _serialize(objs, catalog)


def _add_page(add, pages_id: int, arr: np.ndarray, w_pt: float, h_pt: float) -> int:
    """Add one page's image, content stream and page objects (in that order); returns the page's id."""
    h, w = arr.shape
    data = zlib.compress(np.ascontiguousarray(arr, np.uint8).tobytes(), 6)
    img_id = add(
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n" % (w, h, len(data)) + data + b"\nendstream"
    )
    content = b"q %.4f 0 0 %.4f 0 0 cm /Im0 Do Q" % (w_pt, h_pt)
    content_id = add(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    return add(
        b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %.4f %.4f] /Resources << /XObject << /Im0 %d 0 R >> "
        b"/ProcSet [/PDF /ImageB] >> /Contents %d 0 R >>" % (pages_id, w_pt, h_pt, img_id, content_id)
    )


def _serialize(objs: list[bytes], catalog: int) -> bytes:
    """Header, the numbered objects, the cross-reference table and the trailer."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, catalog, xref)
    return bytes(out)
