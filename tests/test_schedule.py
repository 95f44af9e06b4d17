import pytest

from a5ocr.training.config import PRESETS, scaled_schedule
from a5ocr.training.schedule import EpsSchedule


def test_schedule_shape():
    s = EpsSchedule(0.1, warmup=10, ramp=100)
    assert s(0) == 0 and s(10) == 0
    vals = [s(t) for t in range(0, 130)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))  # monotone
    assert s(110) == pytest.approx(0.1) and s(500) == 0.1
    # smooth at the switch from the power curve to the line
    mid = 10 + 30
    assert abs((s(mid + 1) - s(mid)) - (s(mid) - s(mid - 1))) < 1e-4
    assert s.mixing(0) == 1.0 and s.mixing(500) == 0.0


def test_zero_eps_and_zero_ramp():
    assert EpsSchedule(0.0, 0, 10)(5) == 0.0 and EpsSchedule(0.0, 0, 10).mixing(5) == 1.0
    assert EpsSchedule(0.2, 3, 0)(4) == 0.2
    # exactly ``warmup`` steps at eps 0; a stage without warmup or ramp (A5/P, A5/R) is at
    # eps_max from its first step
    assert [EpsSchedule(0.2, 3, 0)(t) for t in range(5)] == [0.0, 0.0, 0.0, 0.2, 0.2]
    assert EpsSchedule(0.2, 0, 0)(0) == 0.2 and EpsSchedule(0.2, 0, 0).mixing(0) == 0.0


def test_a_scaled_preset_schedule_fits_in_any_stage_length():
    for preset in PRESETS.values():
        base = preset["stage1_steps"]
        assert scaled_schedule(preset, base) == (preset["warmup"], preset["ramp"])
        for steps in range(1, 3 * base):
            warmup, ramp = scaled_schedule(preset, steps)
            assert 0 <= warmup <= ramp and warmup + ramp <= steps
            s = EpsSchedule(0.1, warmup, ramp)
            assert s(steps) == 0.1  # eps_A at the first step after stage 1
