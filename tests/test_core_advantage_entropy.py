"""Group advantages (paper A.2) and entropy-based selection of demo tokens (paper sec. 3)."""

import math

import pytest
import torch
from config_defaults import DEFAULTS
from hypothesis import given, settings
from hypothesis import strategies as st

from prefix_rft.core.advantage import group_advantage, on_policy_baseline_advantage
from prefix_rft.core.entropy import minibatch_group_ids, num_kept, select_demo_tokens

NORM_BY_STD = DEFAULTS.advantage.norm_by_std

# ------------------------------------------------------------------------------------------ advantage


def test_dr_grpo_hand_values():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    index = ["a", "a", "a", "a", "b", "b", "b", "b"]
    adv = group_advantage(scores, index, norm_by_std=NORM_BY_STD)
    assert adv.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.25, 0.25, -0.75, 0.25])


def test_interleaved_groups_and_group_of_one():
    scores = torch.tensor([1.0, 3.0, 0.0, 5.0])
    adv = group_advantage(scores, [0, 1, 0, 2], norm_by_std=NORM_BY_STD)
    assert adv.tolist() == pytest.approx([0.5, 0.0, -0.5, 0.0])


def test_all_equal_rewards_give_zero_even_with_std():
    adv = group_advantage(torch.ones(4), ["u"] * 4, norm_by_std=True)
    assert adv.tolist() == [0.0] * 4


def test_grpo_std_normalisation():
    adv = group_advantage(torch.tensor([1.0, 0.0, 0.0, 1.0]), [0] * 4, norm_by_std=True, eps=0.0)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()  # unbiased, sqrt(1/3)
    assert adv.tolist() == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std])


def test_prefix_aware_baseline_is_on_policy_mean():
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0])
    prefixed = torch.tensor([True, False, False, False])
    adv = on_policy_baseline_advantage(scores, [0] * 4, prefixed, norm_by_std=NORM_BY_STD)
    base = 1.0 / 3.0
    assert adv.tolist() == pytest.approx([1 - base, -base, 1 - base, -base])


def test_prefix_aware_group_without_on_policy_falls_back_to_group_mean():
    adv = on_policy_baseline_advantage(
        torch.tensor([1.0, 0.0]), ["g", "g"], torch.tensor([True, True]), norm_by_std=NORM_BY_STD
    )
    assert adv.tolist() == pytest.approx([0.5, -0.5])


@pytest.mark.parametrize("fn", ["group", "prefix"])
def test_nan_reward_names_the_uid(fn):
    scores = torch.tensor([1.0, float("nan"), 0.0])
    with pytest.raises(ValueError, match="uid='prompt-7'"):
        if fn == "group":
            group_advantage(scores, ["prompt-3", "prompt-7", "prompt-7"], norm_by_std=NORM_BY_STD)
        else:
            on_policy_baseline_advantage(
                scores,
                ["prompt-3", "prompt-7", "prompt-7"],
                torch.zeros(3, dtype=torch.bool),
                norm_by_std=NORM_BY_STD,
            )


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="index has 2"):
        group_advantage(torch.zeros(3), [0, 0], norm_by_std=NORM_BY_STD)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.floats(-5, 5)), min_size=1, max_size=40))
def test_group_advantages_are_centred(rows):
    index = [g for g, _ in rows]
    scores = torch.tensor([s for _, s in rows])
    adv = group_advantage(scores, index, norm_by_std=NORM_BY_STD)
    for g in set(index):
        members = [i for i, x in enumerate(index) if x == g]
        assert adv[members].sum().item() == pytest.approx(0.0, abs=1e-4)
        # ordering is preserved within the group
        for i in members:
            for j in members:
                if scores[i] > scores[j]:
                    assert adv[i] >= adv[j]


# ------------------------------------------------------------------------------------------- entropy


def test_num_kept():
    assert [num_kept(n, 0.2) for n in (0, 1, 3, 5, 10, 11)] == [0, 1, 1, 1, 2, 3]
    assert num_kept(7, 1.0) == 7


def test_select_hand_case_keeps_highest_prefix_entropy_only():
    entropy = torch.tensor([[0.9, 0.1, 0.5, 0.7, 3.0], [0.2, 0.8, 0.0, 0.0, 0.0]])
    prefix = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])  # row 0's 3.0 is a continuation token
    keep = select_demo_tokens(entropy, prefix, top_ratio=0.5, selection="top")
    # N = 6 prefix tokens -> keep 3: 0.9, 0.8, 0.7
    assert keep.tolist() == [[True, False, False, True, False], [False, True, False, False, False]]


def test_ties_broken_by_position():
    entropy = torch.ones(2, 4)
    prefix = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    keep = select_demo_tokens(
        entropy, prefix, top_ratio=0.5, selection="top"
    )  # N = 5 -> 3 kept, the first three
    assert keep.tolist() == [[False, True, True, True], [False, False, False, False]]


def test_groups_rank_separately():
    entropy = torch.tensor([[5.0, 4.0], [3.0, 2.0], [0.1, 0.2], [0.3, 0.4]])
    prefix = torch.ones(4, 2)
    keep = select_demo_tokens(entropy, prefix, 0.25, "top", group_ids=minibatch_group_ids(4, 2))
    assert keep.tolist() == [[True, False], [False, False], [False, False], [False, True]]


def test_minibatch_group_ids():
    assert minibatch_group_ids(6, 4).tolist() == [0, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError):
        minibatch_group_ids(4, 0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ"):
        select_demo_tokens(torch.zeros(2, 3), torch.zeros(2, 4), 0.2, "top")
    with pytest.raises(ValueError, match="top_ratio"):
        select_demo_tokens(torch.zeros(2, 3), torch.zeros(2, 3), 0.0, "top")


@settings(max_examples=150, deadline=None)
@given(
    b=st.integers(1, 8),
    t=st.integers(1, 12),
    ratio=st.floats(0.01, 1.0),
    mb=st.integers(1, 8),
    seed=st.integers(0, 10_000),
    discrete=st.booleans(),
)
def test_selection_properties(b, t, ratio, mb, seed, discrete):
    g = torch.Generator().manual_seed(seed)
    entropy = torch.rand(b, t, generator=g)
    if discrete:  # many ties
        entropy = (entropy * 3).floor()
    prefix = torch.rand(b, t, generator=g) < 0.6
    groups = minibatch_group_ids(b, mb)
    keep = select_demo_tokens(entropy, prefix, ratio, "top", groups)
    assert not (keep & ~prefix).any()
    for gid in groups.unique():
        rows = groups == gid
        p, k, e = prefix[rows], keep[rows], entropy[rows]
        n = int(p.sum())
        assert int(k.sum()) == math.ceil(round(ratio * n, 9))
        if k.any() and (p & ~k).any():
            assert e[k].min() >= e[p & ~k].max()


def test_selection_matches_sort_reference_on_1m_tokens():
    # 1M tokens: the kthvalue-based selection keeps exactly the sort-based top-k
    g = torch.Generator().manual_seed(0)
    entropy = torch.rand(64, 16384, generator=g)
    prefix = torch.rand(64, 16384, generator=g) < 0.3
    keep = select_demo_tokens(entropy, prefix, 0.2, "top")
    values = entropy[prefix]
    k = num_kept(values.numel(), 0.2)
    ref_threshold = values.sort(descending=True).values[k - 1]
    assert int(keep.sum()) == k
    assert entropy[keep].min() == ref_threshold


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_top_entropy_keeps_the_right_count_in_every_dtype(dtype):
    entropy = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=dtype)
    keep = select_demo_tokens(entropy, torch.ones(1, 4, dtype=torch.bool), 0.25, "top")
    assert keep.tolist() == [[False, False, False, True]]
    keep_half = select_demo_tokens(entropy, torch.ones(1, 4, dtype=torch.bool), 0.5, "top")
    assert keep_half.tolist() == [[False, False, True, True]]
