"""The a5ocr command-line interface (installed as a5ocr.cli)."""
