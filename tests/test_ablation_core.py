"""Core pieces behind the paper's ablations: demo-token selection modes, their config keys.

Everything here is pure torch (no verl); the preset-level token tests live in tests/test_presets.py.
"""

from __future__ import annotations

import pytest
import torch
from config_defaults import DEFAULTS
from hypothesis import given, settings
from hypothesis import strategies as st

from prefix_rft.config import PrefixRFTConfigError, from_dict
from prefix_rft.core.entropy import SELECTIONS, num_kept, select_demo_tokens

# ---------------------------------------------------------------- selection: top | random | bottom

ENT = torch.tensor([[3.0, 1.0, 2.0, 0.5, 9.0], [0.2, 4.0, 0.0, 0.0, 0.0]])
PRE = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])  # 6 demo tokens; the 9.0 is a continuation token


def test_top_and_bottom_hand_case():
    # ceil(0.5 * 6) = 3 kept; top: 4.0, 3.0, 2.0; bottom: 0.2, 0.5, 1.0; the 9.0 continuation never
    top = select_demo_tokens(ENT, PRE, 0.5, "top")
    bottom = select_demo_tokens(ENT, PRE, 0.5, "bottom")
    assert top.int().tolist() == [[1, 0, 1, 0, 0], [0, 1, 0, 0, 0]]
    assert bottom.int().tolist() == [[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]]


def test_bottom_ties_go_to_the_earlier_position():
    ent = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    keep = select_demo_tokens(ent, torch.ones(1, 4), 0.5, "bottom")  # 2 of the three 0.0s: the first two
    assert keep.int().tolist() == [[0, 1, 1, 0]]


def test_random_is_seeded_ignores_entropy_and_changes_with_the_seed():
    pre = torch.ones(4, 50)
    a = select_demo_tokens(torch.rand(4, 50), pre, 0.2, "random", seed=7)
    b = select_demo_tokens(torch.rand(4, 50), pre, 0.2, "random", seed=7)
    c = select_demo_tokens(torch.rand(4, 50), pre, 0.2, "random", seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.sum()) == int(c.sum()) == 40


def test_unknown_selection_is_refused():
    with pytest.raises(ValueError, match=r"selection must be one of \('top', 'random', 'bottom'\)"):
        select_demo_tokens(ENT, PRE, 0.2, "middle")


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 6),
    t=st.integers(1, 12),
    ratio=st.floats(0.01, 1.0),
    mb=st.integers(1, 6),
    seed=st.integers(0, 2**40),
    discrete=st.booleans(),
)
def test_kept_count_is_identical_across_modes(b, t, ratio, mb, seed, discrete):
    """Property: every mode keeps exactly ceil(k * N_g) demo tokens per group and nothing else."""
    g = torch.Generator().manual_seed(seed)
    ent = torch.randint(0, 3, (b, t), generator=g).float() if discrete else torch.rand(b, t, generator=g)
    pre = torch.rand(b, t, generator=g) < 0.6
    groups = torch.arange(b) // mb
    masks = {s: select_demo_tokens(ent, pre, ratio, s, group_ids=groups, seed=seed) for s in SELECTIONS}
    for gid in groups.unique():
        rows = groups == gid
        want = num_kept(int(pre[rows].sum()), ratio)
        assert {int(m[rows].sum()) for m in masks.values()} == {want}
    for m in masks.values():
        assert not (m & ~pre).any()  # continuation / padding tokens are never selected
    # top keeps nothing lower than what it drops; bottom the reverse (within each group)
    for gid in groups.unique():
        rows = groups == gid
        e, p = ent[rows], pre[rows]
        for sel, better in (("top", torch.ge), ("bottom", torch.le)):
            kept, dropped = e[masks[sel][rows]], e[p & ~masks[sel][rows]]
            if kept.numel() and dropped.numel():
                ref = kept.min() if sel == "top" else kept.max()
                other = dropped.max() if sel == "top" else dropped.min()
                assert better(ref, other)


# ---------------------------------------------------------------- config: selection / source


def test_selection_and_source_defaults_and_validation():
    cfg = from_dict({}, rollout_n=8)
    assert (cfg.entropy_clip.selection, cfg.entropy_clip.source) == ("top", "old")
    ok = from_dict({"entropy_clip": {"scope": "micro_batch", "source": "current", "selection": "bottom"}})
    assert ok.entropy_clip.source == "current"
    assert from_dict({"entropy_clip": {"scope": "micro_batch"}}).entropy_clip.source == "old"
    cases = [
        ({"selection": "middle"}, r"prefix_rft.entropy_clip.selection='middle' is invalid: expected one of"),
        ({"source": "ref"}, r"prefix_rft.entropy_clip.source='ref' is invalid"),
        ({"source": "current"}, r"entropy_clip.source='current'.*set entropy_clip.scope=micro_batch"),
        ({"source": "current", "scope": "batch"}, r"only the old policy's entropy exists"),
        ({"selection": "random", "scope": "micro_batch"}, r"use entropy_clip.scope=mini_batch or batch"),
    ]
    for block, message in cases:
        with pytest.raises(PrefixRFTConfigError, match=message):
            from_dict({"entropy_clip": block})


# ---------------------------------------------------------------- prefix-aware advantages

from prefix_rft.core.advantage import dr_grpo_prefix_advantage, on_policy_baseline_advantage  # noqa: E402

# one group of 4: a hybrid rollout (3 demo tokens then 2 generated) with reward 1, on-policy rewards 1, 0, 0
SCORES = torch.tensor([1.0, 1.0, 0.0, 0.0])
HYBRID = torch.tensor([1, 0, 0, 0])
PLEN = torch.tensor([3, 0, 0, 0])


def test_dr_grpo_prefix_hand_values():
    adv = dr_grpo_prefix_advantage(SCORES, ["u"] * 4, HYBRID, PLEN, width=5)
    m = 1.0 / 3.0  # mean of the on-policy rewards 1, 0, 0
    assert adv[0].tolist() == pytest.approx([1 - m] * 3 + [1.0, 1.0])  # demo: r - m; continuation: raw r
    assert adv[1].tolist() == pytest.approx([1 - m] * 5)
    assert adv[2].tolist() == pytest.approx([-m] * 5) and adv[3].tolist() == pytest.approx([-m] * 5)
    # a wrong hybrid (r = 0): demo tokens pushed down by m, its continuation gets exactly 0
    adv = dr_grpo_prefix_advantage(torch.tensor([0.0, 1.0, 0.0, 0.0]), ["u"] * 4, HYBRID, PLEN, width=5)
    assert adv[0].tolist() == pytest.approx([-m] * 3 + [0.0, 0.0])


def test_on_policy_baseline_gives_every_token_the_same_value():
    adv = on_policy_baseline_advantage(SCORES, ["u"] * 4, HYBRID, norm_by_std=DEFAULTS.advantage.norm_by_std)
    assert adv.tolist() == pytest.approx([2 / 3, 2 / 3, -1 / 3, -1 / 3])


def test_dr_grpo_prefix_whole_demo_groups_and_fallback():
    # whole demo (prefix_len = response length): no continuation token, all r - m; two interleaved groups
    adv = dr_grpo_prefix_advantage(
        torch.tensor([1.0, 0.0, 0.0, 1.0]),
        ["a", "b", "a", "b"],
        torch.tensor([1, 1, 0, 0]),
        torch.tensor([2, 1, 0, 0]),
        width=2,
    )
    assert adv.tolist() == [[1.0, 1.0], [-1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]  # exact in float32
    # only hybrid rollouts in the group: demo tokens fall back to the whole group's mean (0.5)
    adv = dr_grpo_prefix_advantage(
        torch.tensor([1.0, 0.0]), ["g", "g"], torch.tensor([1, 1]), torch.tensor([1, 1]), width=2
    )
    assert adv.tolist() == [[0.5, 1.0], [-0.5, 0.0]]
    with pytest.raises(ValueError, match="prefix_len"):
        dr_grpo_prefix_advantage(SCORES, ["u"] * 4, HYBRID, torch.tensor([1, 2]), width=5)


def test_unknown_advantage_mode_is_refused_naming_the_modes():
    with pytest.raises(
        PrefixRFTConfigError, match=r"advantage\.mode='prefix_aware'.*on_policy_baseline.*dr_grpo_prefix"
    ):
        from_dict({"advantage": {"mode": "prefix_aware"}})
    assert from_dict({"advantage": {"mode": "dr_grpo_prefix"}}).advantage.mode == "dr_grpo_prefix"
    with pytest.raises(PrefixRFTConfigError, match="prefix_rft.advantage.norm_by_std=True"):
        from_dict({"advantage": {"mode": "dr_grpo_prefix", "norm_by_std": True}})
