"""a5ocr: certifiably robust printed characters (A5, Frosio & Kautz, CVPR 2023)."""

__version__ = "0.1.0"
