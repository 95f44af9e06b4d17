"""Training: the settings every training run shares (``config``: ``TrainingConfig``, the presets),
the eps schedule, the A5 losses, the one training loop (``trainer``), and the two runs built on
it, ``design`` (A5/P, A5/PC) and ``reproduce`` (the paper's Table 9)."""
