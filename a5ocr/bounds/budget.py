"""The memory budget of the final CROWN pass: above it the pass runs in chunks of samples
(``engine.final_chunk``): checkpointed ones for bounds under autograd (``engine._crown_final``),
for the training loss chunks differentiated one at a time (``chunked``, no recompute)."""

from __future__ import annotations

from typing import Optional

import torch

# peak memory of the final CROWN pass (forward + backward) per element of its widest A tensor,
# in units of that tensor (measured: about 4.7 on the paper's net at 64x64, float32)
_CROWN_WORK_FACTOR = 5.0
# The budget of the final CROWN pass when none is given (``max_memory_gib=None``). Without
# gradients (certification) 6 GiB. Under autograd (training) it follows the IBP pass: twice the
# bytes of the pre-activation bounds, at least 0.25 GiB, so that the chunked CROWN pass adds
# about what the IBP pass holds and the step's peak stays within ~2x IBP's. Measured with the
# checkpointed chunks (paper net, batch 124, k = 4, 1 torch thread, quiet machine; RESULTS.md): 64x64 peak RSS
# 1.80 -> 1.25 GiB (IBP 0.70) for 1.37x the time; 128x128 4.82 -> 2.97 GiB (IBP 1.55) for 1.11x.
NO_GRAD_BUDGET_GIB = 6.0
TRAIN_BUDGET_FACTOR = 2.0
TRAIN_BUDGET_FLOOR_GIB = 0.25


def crown_budget_gib(max_memory_gib: Optional[float], pre: dict) -> float:
    """The final CROWN pass's memory budget: ``max_memory_gib`` when given, else the default
    above for the current grad mode (``pre``: the pre-activation bounds {layer: (c, r)})."""
    if max_memory_gib is not None:
        return max_memory_gib
    if not torch.is_grad_enabled():
        return NO_GRAD_BUDGET_GIB
    pre_bytes = sum(t.numel() * t.element_size() for pair in pre.values() for t in pair)
    return max(TRAIN_BUDGET_FLOOR_GIB, TRAIN_BUDGET_FACTOR * pre_bytes / 2**30)
