"""Per-token Prefix-RFT loss and its aggregation (paper sec. 3; the aggregation is verl's ``agg_loss``)."""

import math

import pytest
import torch
from config_defaults import token_loss
from hypothesis import given, settings
from hypothesis import strategies as st

from prefix_rft.core.loss import entropy_loss_mask

AGG_MODES = [
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
    "seq-mean-token-mean",
]


def _t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_ppo_hand_values_with_clip_and_dual_clip():
    # tokens: ratio 1.25 (A=+1: clipped to 1.2), ratio 1.25 (A=-1: unclipped 1.25),
    # ratio 5.0 (A=-1: dual clip at c=3), ratio 0.9 (A=+1: inside the clip range)
    old = _t([0.0, 0.0, 0.0, 0.0])
    lp = torch.log(_t([1.25, 1.25, 5.0, 0.9]))
    adv = _t([1.0, -1.0, -1.0, 1.0])
    mask = torch.ones(1, 4)
    loss, m = token_loss(lp, old, adv, mask, torch.zeros(1, 4))
    assert loss.tolist()[0] == pytest.approx([-1.2, 1.25, 3.0, -0.9], rel=1e-6)
    # verl's definition: the clipped term is the larger one -> only token 0
    assert m["pg_clipfrac"].item() == pytest.approx(0.25)
    assert m["pg_clipfrac_lower"].item() == pytest.approx(0.25)
    assert m["prefix_token_frac"].item() == 0.0


def test_prefix_tokens_share_the_ppo_weight_and_entropy_clip_zeroes_unkept():
    lp = torch.log(_t([0.5, 0.5, 0.5, 0.5]))
    old = torch.log(_t([0.4, 0.4, 0.4, 0.4]))  # ratio 1.25
    adv = torch.full((1, 4), 2.0)
    prefix = _t([1, 1, 0, 0])
    keep = _t([1, 0, 0, 0])
    loss, m = token_loss(lp, old, adv, torch.ones(1, 4), prefix, keep)
    # kept prefix token and continuation tokens: -2 * 1.2; unkept prefix token: 0
    assert loss.tolist()[0] == pytest.approx([-2.4, 0.0, -2.4, -2.4], rel=1e-6)
    assert m["kept_frac"].item() == 0.5
    assert m["prefix_token_frac"].item() == 0.5
    assert m["pg_clipfrac_prefix"].item() == pytest.approx(0.5)
    assert m["pg_clipfrac"].item() == pytest.approx(1.0)


def test_behavior_one_and_luffy_shaping():
    p = 0.3
    lp = torch.log(_t([p, p]))
    old = torch.log(_t([0.9, 0.3]))
    adv = _t([1.0, 1.0])
    prefix = _t([1, 0])
    b1, _ = token_loss(lp, old, adv, torch.ones(1, 2), prefix, is_mode="behavior_one")
    lf, _ = token_loss(lp, old, adv, torch.ones(1, 2), prefix, is_mode="luffy", luffy_gamma=0.1)
    assert b1[0, 0].item() == pytest.approx(-p)
    assert lf[0, 0].item() == pytest.approx(-p / (p + 0.1))
    # continuation token: ordinary PPO (ratio 1)
    assert b1[0, 1].item() == pytest.approx(-1.0) and lf[0, 1].item() == pytest.approx(-1.0)


def test_luffy_gradient_matches_shaping_derivative():
    lp = torch.log(_t([0.3])).requires_grad_(True)
    loss, _ = token_loss(lp, lp.detach(), _t([1.0]), torch.ones(1, 1), _t([1]), is_mode="luffy")
    loss.sum().backward()
    # d/dlogp [-(p/(p+g))] = -g*p/(p+g)^2
    assert lp.grad.item() == pytest.approx(-0.1 * 0.3 / 0.4**2, rel=1e-5)


def test_sft_term_only_on_kept_prefix_tokens():
    lp = torch.log(_t([0.5, 0.25, 0.5]))
    zero_adv = torch.zeros(1, 3)
    prefix, keep = _t([1, 1, 0]), _t([1, 0, 0])
    loss, _ = token_loss(lp, lp, zero_adv, torch.ones(1, 3), prefix, keep, sft_coef=0.1)
    assert loss.tolist()[0] == pytest.approx([0.1 * math.log(2), 0.0, 0.0], rel=1e-6)


def test_rollout_is_weights_apply_to_continuation_only():
    lp = torch.zeros(1, 3)
    adv = torch.ones(1, 3)
    weights = _t([0.5, 0.5, 0.5])
    loss, _ = token_loss(lp, lp, adv, torch.ones(1, 3), _t([1, 0, 0]), rollout_is_weights=weights)
    assert loss.tolist()[0] == pytest.approx([-1.0, -0.5, -0.5])


def test_padding_never_reaches_the_aggregate_and_bad_mode_raises():
    from verl.trainer.ppo.core_algos import agg_loss  # what the actor loss aggregates with

    lp = torch.randn(2, 3)
    mask = _t([1, 1, 0], [1, 0, 0])
    adv = torch.ones(2, 3)
    garbage = adv.masked_fill(mask == 0, 1e6)  # huge advantages on padding positions
    clean, _ = token_loss(lp, lp + 0.1, adv, mask, torch.zeros(2, 3))
    dirty, _ = token_loss(lp, lp + 0.1, garbage, mask, torch.zeros(2, 3))
    for mode in AGG_MODES:
        assert agg_loss(dirty, mask, mode, loss_scale_factor=8).item() == pytest.approx(
            agg_loss(clean, mask, mode, loss_scale_factor=8).item()
        )
    with pytest.raises(ValueError, match="is_mode"):
        token_loss(lp, lp, lp, mask, mask, is_mode="sft")


def test_verls_aggregation_hand_values():
    """The aggregation the actor loss uses (verl's ``agg_loss``), by hand: Dr.GRPO's mode divides the response
    sums by the constant ``loss_scale_factor``; without one verl divides by the padded width, which start-up
    refuses (``validate_verl_config``)."""
    from verl.trainer.ppo.core_algos import agg_loss

    loss = _t([1.0, 2.0, 3.0], [4.0, 0.0, 0.0])
    mask = _t([1, 1, 1], [1, 0, 0])
    assert agg_loss(loss, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert agg_loss(loss, mask, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)
    assert agg_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    # Dr.GRPO: per-response sums (6, 4), averaged over 2 responses, divided by the constant 8
    assert agg_loss(loss, mask, "seq-mean-token-sum-norm", loss_scale_factor=8).item() == pytest.approx(5 / 8)
    # no constant: the padded width (3 here), which changes with each dynamic micro-batch
    assert agg_loss(loss, mask, "seq-mean-token-sum-norm").item() == pytest.approx(5 / 3)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), mode=st.sampled_from(["ppo", "behavior_one", "luffy"]))
def test_unkept_prefix_tokens_get_zero_gradient_and_change_nothing(seed, mode):
    """With every prefix token unkept, the loss on the other tokens equals the loss without a prefix."""
    g = torch.Generator().manual_seed(seed)
    B, T = 3, 6
    lp = (torch.rand(B, T, generator=g) * -3).requires_grad_(True)
    old = lp.detach() + torch.randn(B, T, generator=g) * 0.3
    adv = torch.randn(B, 1, generator=g).expand(B, T)
    mask = (torch.rand(B, T, generator=g) < 0.8).float()
    prefix = (torch.rand(B, T, generator=g) < 0.5).float() * mask
    loss, _ = token_loss(lp, old, adv, mask, prefix, torch.zeros(B, T), is_mode=mode)
    loss.sum().backward()
    assert (lp.grad[prefix.bool()] == 0).all()
    assert (loss[prefix.bool()] == 0).all()
    cont = (mask * (1 - prefix)).bool()
    ref, _ = token_loss(lp.detach(), old, adv, cont.float(), torch.zeros(B, T))
    assert torch.allclose(loss.detach()[cont], ref[cont])


def test_entropy_loss_mask():
    resp, prefix = _t([1, 1, 1, 0]), _t([1, 1, 0, 0])
    assert entropy_loss_mask(resp, prefix, True).tolist() == [[1, 1, 1, 0]]
    assert entropy_loss_mask(resp, prefix, False).tolist() == [[0, 0, 1, 0]]
    # the actor loss passes bool masks: the result stays bool (no int64 copy of the batch)
    out = entropy_loss_mask(resp.bool(), prefix.bool(), False)
    assert out.dtype == torch.bool and out.tolist() == [[False, False, True, False]]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), mode=st.sampled_from(AGG_MODES), split=st.integers(1, 5))
def test_micro_batches_sum_to_the_whole_batch(seed, mode, split):
    """verl's ``agg_loss`` with the global counts the actor passes (``global_batch_info``) and a constant
    ``loss_scale_factor`` (the recipe's): per-micro-batch losses sum to the whole batch's."""
    from verl.trainer.ppo.core_algos import agg_loss

    g = torch.Generator().manual_seed(seed)
    B, T = 6, 5
    loss = torch.randn(B, T, generator=g)
    mask = (torch.rand(B, T, generator=g) < 0.7).float()
    mask[:, -1] = 0  # a padding column: a dynamic micro-batch may be narrower than the whole batch
    whole = agg_loss(loss, mask, mode, loss_scale_factor=16)
    info = {
        "batch_num_tokens": mask.sum(),
        "global_batch_size": (mask.sum(-1) > 0).sum(),
        "loss_scale_factor": 16,
    }
    # parts padded to different widths (T and T - 1), as dynamic micro-batches are
    parts = sum(
        agg_loss(loss[i : i + split, : T - k % 2], mask[i : i + split, : T - k % 2], mode, **info)
        for k, i in enumerate(range(0, B, split))
    )
    assert parts.item() == pytest.approx(whole.item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.float32])
def test_aggregation_mask_excludes_demo_tokens_for_every_mask_dtype(dtype):
    """The actor hands boolean masks (``1 - bool`` is a torch error); tests and verl callers may hand 0/1
    ints or floats: every dtype keeps exactly the generated response tokens."""
    from prefix_rft.core.loss import aggregation_mask

    response = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).to(dtype)
    prefix = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]).to(dtype)
    out = aggregation_mask(response, prefix, "exclude")
    assert out.dtype == dtype
    assert out.to(torch.int64).tolist() == [[0, 1, 1, 0], [1, 1, 0, 0]]
    assert aggregation_mask(response, prefix, "train") is response
