"""The learning benchmark's task (benchmarks/fixtures/arith.py): exact demonstrations, disjoint splits, graded 1."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.fixtures import arith
from prefix_rft.data.contract import validate_rows
from prefix_rft.reward import compute_score


def test_solution_writes_each_column_with_its_carry():
    assert arith.solution(347, 285) == "7+5=12, 2. 4+8+1=13, 32. 3+2+1=6, 632. \\boxed{632}"
    # a final carry becomes the leading digit of the last column's result
    assert arith.solution(847, 285) == "7+5=12, 2. 4+8+1=13, 32. 8+2+1=11, 1132. \\boxed{1132}"
    assert arith.solution(5, 7) == "5+7=12, 12. \\boxed{12}"


@settings(max_examples=60, deadline=None)
@given(a=st.integers(0, 99999), b=st.integers(0, 99999))
def test_every_demonstration_is_graded_correct_by_the_project_reward(a, b):
    demo = arith.solution(a, b)
    assert compute_score(data_source="add", solution_str=demo, ground_truth=str(a + b))["score"] == 1.0
    assert compute_score(data_source="add", solution_str=demo, ground_truth=str(a + b + 1))["score"] == 0.0


def test_eval_and_train_problems_are_disjoint_and_rows_follow_the_contract():
    for level in (2, 3):
        train = set(arith.sample_problems(level, 400, seed=0, split="train"))
        evals = set(arith.sample_problems(level, 64, seed=0, split="eval"))
        assert len(train) == 400 and len(evals) == 64 and not train & evals
    rows = arith.rows(3, 8, split="train") + arith.rows(3, 8, split="eval")
    validate_rows(rows[:8], require_demos=True)
    validate_rows(rows[8:], require_demos=False)
    assert {r["data_source"] for r in rows} == {"add3"}


def test_too_many_problems_for_a_level_is_an_error():
    with pytest.raises(ValueError, match="level 1 has too few distinct eval problems"):
        arith.sample_problems(1, 100, seed=0, split="eval")
    with pytest.raises(ValueError, match="level must be one of"):
        arith.rows(9, 1)
