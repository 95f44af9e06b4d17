"""``python -m a5ocr.cli``: the same command line as the ``a5ocr`` script (for ``torchrun -m a5ocr.cli``)."""

from a5ocr.cli.app import main

main()
