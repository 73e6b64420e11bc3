"""LR schedules are pure functions of training progress (epochs as floats)."""
import math

import pytest

from fastretrain import FastRetrainError
from fastretrain.schedules import parse_schedule


def test_values():
    cos = parse_schedule("cosine", 10)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0, abs=1e-12)
    assert parse_schedule("constant", 3)(2.5) == 1.0
    step = parse_schedule("step:3,6", 8)
    assert [step(e) for e in (0, 2.9, 3, 5.9, 6, 7.9)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    pw = parse_schedule("piecewise:1x3,0.1x3,0.01x2", 16)  # stretched from 8 to 16 epochs
    assert [pw(e) for e in (0, 5.9, 6, 11.9, 12, 15.9)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    one = parse_schedule("onecycle", 100)
    assert one(0) == pytest.approx(0.04) and one(25) == pytest.approx(1.0) and one(100) < 1e-3
    assert max(one(e / 10) for e in range(1000)) <= 1.0
    cyc = parse_schedule("cyclic:2", 8)
    assert cyc(0) == 1.0 and cyc(1) == pytest.approx(0.5) and cyc(2) == 1.0 and cyc(3.999) < 1e-4
    assert math.isclose(parse_schedule("cyclic", 8)(2), 1.0)  # default period: epochs / 4


@pytest.mark.parametrize("spec", ["linear", "step:x", "piecewise:1x", "piecewise:"])
def test_bad_specs(spec):
    with pytest.raises(FastRetrainError):
        parse_schedule(spec, 5)
