"""Schedules at hand-computed steps."""

import pytest

from harness.schedules import lr_multiplier, muon_momentum, weight_decay_multiplier


@pytest.mark.parametrize(
    "step,expected",
    [(0, 1.0), (40, 1.0), (50, 1.0), (60, 0.8), (75, 0.5), (90, 0.2), (100, 0.0)],
)
def test_recipe_lr_schedule_flat_then_linear_warmdown_over_the_last_half(step, expected):
    assert lr_multiplier(step, 100, warmup_ratio=0.0, warmdown_ratio=0.5, final_lr_frac=0.0) == pytest.approx(expected)


@pytest.mark.parametrize("step,expected", [(0, 0.1), (4, 0.5), (9, 1.0), (10, 1.0), (80, 1.0), (90, 0.55), (100, 0.1)])
def test_warmup_and_final_fraction(step, expected):
    # 10 warmup steps reach 1 at step 9; warmdown over 20 steps ends at final_lr_frac 0.1
    got = lr_multiplier(step, 100, warmup_ratio=0.1, warmdown_ratio=0.2, final_lr_frac=0.1)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("step,expected", [(0, 0.85), (150, 0.90), (300, 0.95), (1000, 0.95)])
def test_muon_momentum_warmup(step, expected):
    assert muon_momentum(step, 0.85, 0.95, 300) == pytest.approx(expected)


@pytest.mark.parametrize("step,expected", [(0, 1.0), (25, 0.75), (100, 0.0)])
def test_weight_decay_falls_linearly_to_zero(step, expected):
    assert weight_decay_multiplier(step, 100) == pytest.approx(expected)


@pytest.mark.parametrize("step,expected", [(0, 1.0), (25, 0.5 * (1 + 2**-0.5)), (50, 0.5), (100, 0.0)])
def test_weight_decay_cosine(step, expected):
    assert weight_decay_multiplier(step, 100, "cosine") == pytest.approx(expected)


def test_fixed_warmup_steps_replace_the_ratio():
    assert lr_multiplier(0, 100, warmup_ratio=0.5, warmdown_ratio=0.0, final_lr_frac=0.0, warmup_steps=4) == 0.25
    assert lr_multiplier(3, 100, warmup_ratio=0.5, warmdown_ratio=0.0, final_lr_frac=0.0, warmup_steps=4) == 1.0


@pytest.mark.parametrize("step,expected", [(10, 0.97), (50, 0.97), (75, 0.935), (99, 0.90 + 0.07 / 50)])
def test_muon_momentum_falls_over_the_warmdown(step, expected):
    # 100 steps, warmdown 0.5: from 0.97 at step 50 to 0.90 at step 100.
    got = muon_momentum(step, 0.85, 0.97, 10, warmdown_momentum=0.90, num_iterations=100, warmdown_ratio=0.5)
    assert got == pytest.approx(expected)
