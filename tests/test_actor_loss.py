"""Integration tests of prefix_rft.actor_loss on verl 0.9.1's own micro-batch layout.

``data`` is built as verl's engine sees it on the v1 (TransferQueue) path: jagged per-sample tensors
(``prompts``, ``responses``, ``response_mask``, ``old_log_probs``, ``advantages``, ...) plus the
non-tensor ``dp_size`` / ``batch_num_tokens`` / ``global_batch_size``; ``model_output`` holds nested
log-probs/entropy over prompt+response (shifted by one, as ``no_padding_2_padding`` expects).
"""

from __future__ import annotations

import math

import pytest
import torch
from verl.utils import tensordict_utils as tu
from verl.utils.metric import AggregationType, Metric
from verl.workers.config import FSDPActorConfig
from verl.workers.engine.utils import prepare_micro_batches
from verl.workers.utils.losses import ppo_loss

from prefix_rft.actor_loss import make_prefix_rft_loss_fn, prefix_rft_ppo_loss
from prefix_rft.config import from_dict

AGG_MODES = [
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
]


def actor_config(**overrides):
    kwargs = dict(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, entropy_coeff=0.01)
    kwargs.update(overrides)
    return FSDPActorConfig(**kwargs)


def prefix_config(**loss):
    block = {"num_prefixed": 1, "entropy_clip": {"enable": True}, "loss": loss}
    return from_dict(block, rollout_n=8)


def _nested(rows, dtype=None):
    return torch.nested.as_nested_tensor([torch.as_tensor(r, dtype=dtype) for r in rows], layout=torch.jagged)


def build_batch(samples, *, resp_lp=None, entropy=None, global_info=True, extra=None):
    """(model_output, data, resp_lp leaf, entropy leaf) from per-sample dicts.

    Each sample: plen, and per response token lists ``mask``, ``old``, ``lp``, ``ent``, ``ref``,
    ``isw``, ``prefix``, ``keep`` and a scalar ``adv``.
    """
    bsz = len(samples)
    width = max(len(s["lp"]) for s in samples)
    if resp_lp is None:
        resp_lp = torch.zeros(bsz, width, dtype=torch.float64)
        entropy = torch.zeros(bsz, width, dtype=torch.float64)
        for i, s in enumerate(samples):
            resp_lp[i, : len(s["lp"])] = torch.tensor(s["lp"], dtype=torch.float64)
            entropy[i, : len(s["ent"])] = torch.tensor(s["ent"], dtype=torch.float64)
        resp_lp.requires_grad_(True)
        entropy.requires_grad_(True)
    lp_rows, ent_rows, offsets = [], [], [0]
    for i, s in enumerate(samples):
        rlen = len(s["lp"])
        pad_front = torch.zeros(s["plen"] - 1, dtype=torch.float64)
        pad_back = torch.zeros(1, dtype=torch.float64)
        # model output at position t scores token t+1: the response log-probs start at plen - 1
        lp_rows.append(torch.cat([pad_front, resp_lp[i, :rlen], pad_back]))
        ent_rows.append(torch.cat([pad_front, entropy[i, :rlen], pad_back]))
        offsets.append(offsets[-1] + s["plen"] + rlen)
    offsets = torch.tensor(offsets)
    model_output = {
        "log_probs": torch.nested.nested_tensor_from_jagged(torch.cat(lp_rows), offsets),
        "entropy": torch.nested.nested_tensor_from_jagged(torch.cat(ent_rows), offsets),
    }
    tensors = {
        "input_ids": _nested([[7] * s["plen"] + [9] * len(s["lp"]) for s in samples], torch.int64),
        "prompts": _nested([[7] * s["plen"] for s in samples], torch.int64),
        "responses": _nested([[9] * len(s["lp"]) for s in samples], torch.int64),
        "response_mask": _nested([s["mask"] for s in samples], torch.int64),
        "old_log_probs": _nested([s["old"] for s in samples], torch.float64),
        "advantages": _nested([[s["adv"]] * len(s["lp"]) for s in samples], torch.float64),
        "ref_log_prob": _nested([s["ref"] for s in samples], torch.float64),
        "rollout_is_weights": _nested([s["isw"] for s in samples], torch.float64),
        "prefix_mask": _nested([s["prefix"] for s in samples], torch.int64),
        "prefix_keep_mask": _nested([s["keep"] for s in samples], torch.int64),
    }
    for key in extra or ():
        tensors.pop(key)
    n_tokens = sum(sum(s["mask"]) for s in samples)
    info = dict(
        dp_size=1,
        batch_num_tokens=n_tokens if global_info else None,
        global_batch_size=bsz if global_info else None,
    )
    data = tu.get_tensordict(tensors, non_tensor_dict=info)
    return model_output, data, resp_lp, entropy


def random_samples(n, seed, *, with_prefix=True):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        plen = int(torch.randint(2, 5, (1,), generator=g))
        rlen = int(torch.randint(3, 9, (1,), generator=g))
        mask = [1] * rlen
        if rlen > 4 and i % 3 == 2:
            mask[-1] = 0  # a masked (e.g. tool) token inside the response
        n_prefix = int(torch.randint(1, rlen, (1,), generator=g)) if with_prefix and i % 2 == 0 else 0
        prefix = [1] * n_prefix + [0] * (rlen - n_prefix)
        keep = [int(p and torch.rand(1, generator=g) < 0.5) for p in prefix]
        old = (-torch.rand(rlen, generator=g) * 2).tolist()
        lp = [o + float(d) for o, d in zip(old, torch.randn(rlen, generator=g) * 0.4, strict=True)]
        out.append(
            dict(
                plen=plen,
                mask=mask,
                old=old,
                lp=lp,
                ent=(torch.rand(rlen, generator=g) * 3).tolist(),
                ref=(-torch.rand(rlen, generator=g) * 2).tolist(),
                isw=(0.5 + torch.rand(rlen, generator=g)).tolist(),
                prefix=prefix,
                keep=keep,
                adv=float(torch.randn(1, generator=g)),
            )
        )
    return out


def test_hand_computed_small_case():
    """Two sequences, token-mean, entropy bonus off the prefix, k1 KL: every term by hand."""
    samples = [
        # hybrid rollout: 3 prefix tokens (only the 2nd kept), 2 generated tokens, A = +1
        dict(
            plen=2,
            mask=[1, 1, 1, 1, 1],
            old=[-1.0, -1.0, -1.0, -1.0, -1.0],
            lp=[-0.5, -1.1, -0.9, -0.5, -1.0],
            ent=[1.0, 2.0, 3.0, 0.5, 0.25],
            ref=[-1.0] * 5,
            isw=[1.0, 1.0, 1.0, 2.0, 0.5],
            prefix=[1, 1, 1, 0, 0],
            keep=[0, 1, 0, 0, 0],
            adv=1.0,
        ),
        # on-policy rollout, A = -2: dual clip on the last token (ratio e^2 > 3)
        dict(
            plen=3,
            mask=[1, 1, 1],
            old=[-2.0, -2.0, -2.0],
            lp=[-2.0, -2.5, 0.0],
            ent=[0.1, 0.2, 0.3],
            ref=[-2.0] * 3,
            isw=[1.0, 1.0, 1.0],
            prefix=[0, 0, 0],
            keep=[0, 0, 0],
            adv=-2.0,
        ),
    ]
    cfg = actor_config(entropy_coeff=0.1, use_kl_loss=True, kl_loss_type="kl", kl_loss_coef=0.5)
    model_output, data, _, _ = build_batch(samples)
    loss, metrics = prefix_rft_ppo_loss(cfg, model_output, data, prefix_config=prefix_config())

    def ppo_term(r, a):
        clipped = max(-a * r, -a * min(max(r, 0.8), 1.2))
        return min(clipped, -a * 3.0) if a < 0 else clipped

    e = math.exp
    pg = (
        0.0  # unkept prefix token: advantage zeroed
        + ppo_term(e(-0.1), 1.0)  # kept prefix token
        + 0.0  # unkept
        + 2.0 * ppo_term(e(0.5), 1.0)  # continuation, IS weight 2 (ratio 1.65 clipped to 1.2)
        + 0.5 * ppo_term(e(0.0), 1.0)  # continuation, IS weight 0.5
        + ppo_term(1.0, -2.0)
        + ppo_term(e(-0.5), -2.0)
        + ppo_term(e(2.0), -2.0)
    ) / 8
    ent = (0.5 + 0.25 + 0.1 + 0.2 + 0.3) / 8  # prefix tokens excluded, denominator = all 8 tokens
    kl = sum(a - b for s in samples for a, b in zip(s["lp"], s["ref"], strict=True)) / 8
    assert ppo_term(e(2.0), -2.0) == pytest.approx(6.0)  # the dual clip is exercised
    assert loss.item() == pytest.approx(pg - 0.1 * ent + 0.5 * kl, abs=1e-9)
    assert metrics["actor/pg_loss"].values[0] == pytest.approx(pg, abs=1e-9)
    assert metrics["actor/entropy_loss"].values[0] == pytest.approx(ent, abs=1e-9)
    assert metrics["kl_loss"].values[0] == pytest.approx(kl, abs=1e-9)
    # 3 demo tokens, 1 kept, none clipped (exact counts, SUM-aggregated)
    assert metrics["prefix_rft/demo_tokens"].values[0] == 3
    assert metrics["prefix_rft/kept_demo_tokens"].values[0] == 1
    assert metrics["prefix_rft/clipped_demo_tokens"].values[0] == 0
    assert metrics["prefix_rft/kept_demo_tokens"].aggregation == AggregationType.SUM
    # clipped tokens: continuation ratio e^0.5 (A>0) and on-policy e^2 (A<0) -> 2 of 5 continuation
    assert metrics["prefix_rft/pg_clipfrac_continuation"].values[0] == pytest.approx(2 / 5, abs=1e-6)
    assert metrics["actor/pg_clipfrac"].values[0] == pytest.approx(2 / 8, abs=1e-6)


def test_sft_coef_reaches_the_loss():
    samples = random_samples(4, seed=3)
    cfg = actor_config(entropy_coeff=0.0)
    mo, data, lp, _ = build_batch(samples)
    base, _ = prefix_rft_ppo_loss(cfg, mo, data, prefix_config=prefix_config())
    mo, data, lp, _ = build_batch(samples)
    with_sft, _ = prefix_rft_ppo_loss(cfg, mo, data, prefix_config=prefix_config(sft_coef=0.3))
    kept_lp = sum(
        v for s in samples for v, k, m in zip(s["lp"], s["keep"], s["mask"], strict=True) if k and m
    )
    n_tokens = sum(sum(s["mask"]) for s in samples)
    assert kept_lp != 0
    assert (with_sft - base).item() == pytest.approx(-0.3 * kept_lp / n_tokens, abs=1e-9)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batches_sum_to_the_whole_batch(mode):
    samples = random_samples(6, seed=11)
    extra = {"loss_scale_factor": 16} if mode == "seq-mean-token-sum-norm" else {}
    cfg = actor_config(loss_agg_mode=mode, use_kl_loss=True, **extra)
    pcfg = prefix_config(is_mode="luffy", sft_coef=0.1)
    mo, data, _, _ = build_batch(samples)
    whole, _ = prefix_rft_ppo_loss(cfg, mo, data, prefix_config=pcfg)

    # split exactly like the engine (fixed micro-batch size path of prepare_micro_batches)
    _, data, resp_lp, entropy = build_batch(samples)
    tu.assign_non_tensor(data, use_dynamic_bsz=False, micro_batch_size_per_gpu=2)
    micro_batches, _ = prepare_micro_batches(data)
    assert len(micro_batches) == 3
    total = 0.0
    for k, mb in enumerate(micro_batches):
        part = samples[2 * k : 2 * k + 2]
        mo_k, _, _, _ = build_batch(
            part, resp_lp=resp_lp[2 * k : 2 * k + 2], entropy=entropy[2 * k : 2 * k + 2]
        )
        loss_k, _ = prefix_rft_ppo_loss(cfg, mo_k, mb, prefix_config=pcfg)
        total = total + loss_k
    assert total.item() == pytest.approx(whole.item(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("mode", ["seq-mean-token-sum-norm", "token-mean"])
def test_dynamic_micro_batches_on_two_dp_ranks_give_the_whole_batch_loss_and_gradient(mode):
    """Dr.GRPO's normaliser under dynamic batching and dp = 2, with the counts verl's engine passes.

    Each rank holds half the mini-batch; verl's FSDP engine all-reduces the token count
    (``batch_num_tokens``), sets ``dp_size`` and passes the trainer's ``global_batch_size`` (mini-batch rows
    over all ranks); ``prepare_micro_batches`` packs each rank's rows by token count. DDP averages the
    ranks' gradients, so the mean over ranks of the summed micro-batch losses must be the dp=1 loss.
    """
    samples = random_samples(8, seed=17)
    cfg = actor_config(loss_agg_mode=mode, loss_scale_factor=12, use_kl_loss=True, entropy_coeff=0.01)
    pcfg = prefix_config(is_mode="ppo", sft_coef=0.1)
    mo, data, lp_whole, ent_whole = build_batch(samples)
    whole, _ = prefix_rft_ppo_loss(cfg, mo, data, prefix_config=pcfg)
    whole.backward()

    _, _, resp_lp, entropy = build_batch(samples)
    n_tokens = sum(sum(s["mask"]) for s in samples)
    per_rank, widths = [], set()
    for rank in range(2):
        rows = list(range(rank * 4, rank * 4 + 4))
        _, rank_data, _, _ = build_batch([samples[i] for i in rows])
        tu.assign_non_tensor(
            rank_data,
            dp_size=2,
            batch_num_tokens=n_tokens,
            global_batch_size=len(samples),
            use_dynamic_bsz=True,
        )
        tu.assign_non_tensor(rank_data, max_token_len_per_gpu=14)
        micro_batches, index = prepare_micro_batches(rank_data)
        assert len(micro_batches) >= 2
        rank_loss = 0.0
        for mb, idx in zip(micro_batches, index, strict=True):
            part = [rows[i] for i in idx]
            mo_k, _, _, _ = build_batch(
                [samples[i] for i in part], resp_lp=resp_lp[part], entropy=entropy[part]
            )
            widths.add(max(len(samples[i]["lp"]) for i in part))
            loss_k, _ = prefix_rft_ppo_loss(cfg, mo_k, mb, prefix_config=pcfg)
            rank_loss = rank_loss + loss_k
        per_rank.append(rank_loss)
    assert len(widths) > 1  # the micro-batches have different padded widths
    averaged = (per_rank[0] + per_rank[1]) / 2  # DDP's gradient all-reduce averages over ranks
    assert averaged.item() == pytest.approx(whole.item(), rel=1e-9, abs=1e-12)
    averaged.backward()
    torch.testing.assert_close(resp_lp.grad, lp_whole.grad, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(entropy.grad, ent_whole.grad, atol=1e-12, rtol=1e-9)


def test_dr_grpo_normaliser_is_the_constant_not_the_token_count():
    """seq-mean-token-sum-norm: sum each response's token losses, average over responses, divide by 12."""
    sample = dict(
        plen=2,
        mask=[1, 1, 1],
        old=[-1.0] * 3,
        lp=[-1.0] * 3,
        ent=[0.0] * 3,
        ref=[-1.0] * 3,
        isw=[1.0] * 3,
        prefix=[0, 0, 0],
        keep=[0, 0, 0],
        adv=1.0,
    )
    short = dict(sample, mask=[1, 0, 0], adv=-2.0)
    cfg = actor_config(loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=12, entropy_coeff=0.0)
    mo, data, _, _ = build_batch([sample, short])
    loss, _ = prefix_rft_ppo_loss(cfg, mo, data, prefix_config=prefix_config())
    # ratio 1: token loss -A; sequence sums -3 and +2; mean over 2 sequences = -0.5; / 12
    assert loss.item() == pytest.approx(-0.5 / 12, abs=1e-12)
    # without a loss_scale_factor: refused at start-up (test_recipe_config.py, the loss no longer re-checks)


def test_unkept_prefix_tokens_get_zero_gradient():
    samples = random_samples(6, seed=5)
    for s in samples:
        s["lp"] = list(s["old"])  # ratio 1: no token is clipped, so every trained token has a gradient
    cfg = actor_config(entropy_coeff=0.05, use_kl_loss=False)
    mo, data, resp_lp, entropy = build_batch(samples)
    loss, _ = prefix_rft_ppo_loss(cfg, mo, data, prefix_config=prefix_config())
    loss.backward()
    n_unkept = n_kept = 0
    for i, s in enumerate(samples):
        for t, (p, k, m) in enumerate(zip(s["prefix"], s["keep"], s["mask"], strict=True)):
            if not m:
                assert resp_lp.grad[i, t] == 0
                continue
            if p and not k:
                n_unkept += 1
                assert resp_lp.grad[i, t] == 0, (i, t)
            else:
                n_kept += p
                assert resp_lp.grad[i, t] != 0, (i, t)
            # entropy bonus: continuation tokens only (entropy_bonus_on_prefix=false)
            assert (entropy.grad[i, t] == 0) == bool(p), (i, t)
    assert n_unkept > 0 and n_kept > 0


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("global_info", [True, False])
def test_all_on_policy_batch_equals_verl_ppo_loss(mode, global_info):
    samples = random_samples(5, seed=23, with_prefix=False)
    extra = {"loss_scale_factor": 8} if mode == "seq-mean-token-sum-norm" else {}
    kwargs = dict(loss_agg_mode=mode, use_kl_loss=True, kl_loss_coef=0.2, entropy_coeff=0.01, **extra)
    mo, data, lp_ours, ent_ours = build_batch(samples, global_info=global_info)
    ours, our_metrics = prefix_rft_ppo_loss(actor_config(**kwargs), mo, data, prefix_config=prefix_config())
    mo, data, lp_verl, ent_verl = build_batch(
        samples, global_info=global_info, extra=("prefix_mask", "prefix_keep_mask")
    )
    ref, ref_metrics = ppo_loss(actor_config(**kwargs), mo, data)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-6)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(lp_ours.grad, lp_verl.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(ent_ours.grad, ent_verl.grad, atol=1e-6, rtol=0)
    for key in ("actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"):
        assert our_metrics[key].values[0] == pytest.approx(ref_metrics[key].values[0], abs=1e-6), key
    for key in ("actor/pg_loss", "actor/entropy_loss", "kl_loss"):
        assert our_metrics[key].aggregation == ref_metrics[key].aggregation
        assert our_metrics[key].values[0] == pytest.approx(ref_metrics[key].values[0], abs=1e-6)
    assert our_metrics["kl_coef"] == ref_metrics["kl_coef"]


def test_plain_batch_is_verl_ppo_loss_for_any_loss_mode_only_without_demo_prefixes():
    samples = random_samples(4, seed=2, with_prefix=False)
    kwargs = dict(policy_loss={"loss_mode": "gspo"}, clip_ratio_low=3e-4, clip_ratio_high=4e-4)
    rft = from_dict({"num_prefixed": 0}, rollout_n=8)
    mo, data, _, _ = build_batch(samples, extra=("prefix_mask", "prefix_keep_mask"))
    ours, _ = make_prefix_rft_loss_fn(actor_config(**kwargs), rft)(model_output=mo, data=data)
    mo, data, _, _ = build_batch(samples, extra=("prefix_mask", "prefix_keep_mask"))
    ref, _ = ppo_loss(actor_config(**kwargs), mo, data)
    assert ours.item() == ref.item()
    # with demo prefixes configured, a batch without prefix_mask means the wrong agent loop ran
    mo, data, _, _ = build_batch(samples, extra=("prefix_mask", "prefix_keep_mask"))
    with pytest.raises(ValueError, match="default_agent_loop=prefix_rft_agent"):
        make_prefix_rft_loss_fn(actor_config(), prefix_config())(model_output=mo, data=data)


def test_metrics_aggregate_across_ranks_with_uneven_demo_micro_batches():
    """verl's dp aggregation needs the same number of values per rank: every micro-batch emits every key,
    and the SUM-aggregated counts add up to the global number of demo tokens."""
    with_demo = random_samples(2, seed=3)
    without = random_samples(2, seed=4, with_prefix=False)
    per_rank = []
    for rank_samples in ([with_demo, with_demo], [with_demo, without]):  # rank 1 has a demo-free micro-batch
        merged: dict = {}
        for micro in rank_samples:
            mo, data, _, _ = build_batch(micro)
            tu.assign_non_tensor(data, dp_size=2)
            _, metrics = prefix_rft_ppo_loss(actor_config(), mo, data, prefix_config=prefix_config())
            for key, value in metrics.items():
                if isinstance(value, Metric):
                    merged.setdefault(key, value.init_list()).append(value)
        per_rank.append(merged)
    assert per_rank[0].keys() == per_rank[1].keys()
    n_demo = sum(sum(s["prefix"]) for s in with_demo)
    for key in per_rank[0]:
        value = Metric.aggregate_dp([per_rank[0][key], per_rank[1][key]])
        if key == "prefix_rft/demo_tokens":
            assert value == pytest.approx(3 * n_demo)


def test_missing_keep_mask_with_entropy_clipping_is_an_error():
    samples = random_samples(4, seed=1)
    mo, data, _, _ = build_batch(samples, extra=("prefix_keep_mask",))
    with pytest.raises(ValueError, match="prefix_keep_mask"):
        prefix_rft_ppo_loss(actor_config(), mo, data, prefix_config=prefix_config())


def test_entropy_clipping_disabled_keeps_every_prefix_token():
    samples = random_samples(4, seed=1)
    cfg = actor_config(entropy_coeff=0.0)
    off = from_dict({"entropy_clip": {"enable": False}}, rollout_n=8)
    mo, data, _, _ = build_batch(samples, extra=("prefix_keep_mask",))
    loss_off, metrics = prefix_rft_ppo_loss(cfg, mo, data, prefix_config=off)
    for s in samples:
        s["keep"] = list(s["prefix"])
    mo, data, _, _ = build_batch(samples)
    loss_all_kept, _ = prefix_rft_ppo_loss(cfg, mo, data, prefix_config=prefix_config())
    assert loss_off.item() == pytest.approx(loss_all_kept.item(), abs=1e-12)
    kept = metrics["prefix_rft/kept_demo_tokens"].values[0]
    assert kept == metrics["prefix_rft/demo_tokens"].values[0] == sum(sum(s["prefix"]) for s in samples)


def test_bad_setups_are_refused():
    samples = random_samples(2, seed=1)
    mo, data, _, _ = build_batch(samples)
    with pytest.raises(TypeError, match="prefix_config"):
        prefix_rft_ppo_loss(actor_config(), mo, data)  # the config is bound by make_prefix_rft_loss_fn ...
    with pytest.raises(TypeError, match="from_dict"):
        make_prefix_rft_loss_fn(actor_config(), None)  # ... which refuses anything but a PrefixRFTConfig
    # policy_loss.loss_mode other than vanilla: refused at start-up (test_recipe_config.py)
    with pytest.raises(TypeError, match="from_dict"):
        make_prefix_rft_loss_fn(actor_config(), {"num_prefixed": 1})


def test_micro_batch_scope_ranks_by_current_entropy():
    """scope=micro_batch (authors' code): top ceil(k*N) demo tokens of the micro-batch by current entropy."""
    base = dict(
        plen=2,
        mask=[1] * 6,
        old=[-1.0] * 6,
        lp=[-0.9, -1.2, -0.8, -1.1, -1.0, -0.7],
        ref=[-1.0] * 6,
        isw=[1.0] * 6,
        adv=1.5,
    )
    # 4 prefix tokens with entropies 3, 1, 2, 0.5 -> top_ratio 0.5 keeps ceil(0.5 * 4) = 2: the 1st and 3rd
    sample = dict(base, ent=[3.0, 1.0, 2.0, 0.5, 9.0, 9.0], prefix=[1, 1, 1, 1, 0, 0], keep=[0] * 6)
    other = dict(base, ent=[0.1] * 6, prefix=[0] * 6, keep=[0] * 6, adv=-0.5)
    cfg = actor_config(entropy_coeff=0.0)
    micro = from_dict(
        {"entropy_clip": {"enable": True, "scope": "micro_batch", "source": "current", "top_ratio": 0.5}},
        rollout_n=8,
    )
    mo, data, _, _ = build_batch([sample, other])  # its prefix_keep_mask (all 0) must be ignored
    loss, metrics = prefix_rft_ppo_loss(cfg, mo, data, prefix_config=micro)
    expected_keep = dict(sample, keep=[1, 0, 1, 0, 0, 0])
    mo, data, _, _ = build_batch([expected_keep, other])
    ref, _ = prefix_rft_ppo_loss(cfg, mo, data, prefix_config=prefix_config())
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)
    assert metrics["prefix_rft/kept_demo_tokens"].values[0] == 2
    assert metrics["prefix_rft/demo_tokens"].values[0] == 4
    # no current-policy entropy in model_output (actor.calculate_entropy=false, entropy_coeff=0): refused at
    # start-up (test_recipe_config.py), the loss no longer re-checks


def _with_replay(data, mini_batch_ids, *, count, step):
    data["prefix_rft_minibatch"] = torch.tensor(mini_batch_ids, dtype=torch.int64)
    data["prefix_rft_num_minibatches"] = torch.full((len(mini_batch_ids),), count, dtype=torch.int64)
    data["prefix_rft_step"] = torch.full((len(mini_batch_ids),), step, dtype=torch.int64)
    return data


def _set_replay_state(**state):
    """Position this process's replay tracker (each simulated rank replays its own order)."""
    import prefix_rft.actor_loss as al

    getattr(al, "_REPLAY_STATE", {}).update(state)


def _loss_on(samples, ids, *, count, step, dp_size=1):
    mo, data, _, _ = build_batch(samples)
    tu.assign_non_tensor(data, dp_size=dp_size)
    _with_replay(data, ids, count=count, step=step)
    return prefix_rft_ppo_loss(actor_config(), mo, data, prefix_config=prefix_config())


def test_step_totals_of_demo_token_counts_with_two_mini_batches_and_two_ranks():
    """Aggregated exactly as verl does (per mini-batch ``Metric.aggregate_dp`` over the dp ranks' micro-batch
    lists, then ``reduce_metrics`` over mini-batches): the logged counts are the step's totals."""
    from verl.utils.metric import reduce_metrics

    step, dp, n_mini = 101, 2, 2
    samples = {
        (r, m, u): random_samples(2, seed=100 + 8 * r + 2 * m + u)
        for r in range(dp)
        for m in range(2)
        for u in range(2)
    }
    per_mini: dict[str, list] = {}
    for m in range(n_mini):
        per_rank = []
        for r in range(dp):
            merged: dict = {}
            _set_replay_state(step=step if m else None, last=m - 1 if m else None)  # rank r's own order
            for u in range(2):
                _, metrics = _loss_on(samples[r, m, u], [m, m], count=n_mini, step=step, dp_size=dp)
                for key, value in metrics.items():
                    if isinstance(value, Metric):
                        merged.setdefault(key, value.init_list()).append(value)
            per_rank.append(merged)
        for key in ("prefix_rft/demo_tokens", "prefix_rft/kept_demo_tokens"):
            per_mini.setdefault(key, []).append(Metric.aggregate_dp([per_rank[0][key], per_rank[1][key]]))
    logged = reduce_metrics(per_mini)
    every = [s for group in samples.values() for s in group]
    assert logged["prefix_rft/demo_tokens"] == pytest.approx(sum(sum(s["prefix"]) for s in every))
    kept = sum(sum(p and k for p, k in zip(s["prefix"], s["keep"], strict=True)) for s in every)
    assert logged["prefix_rft/kept_demo_tokens"] == pytest.approx(kept)


def test_mini_batch_replay_guard():
    import prefix_rft.actor_loss as al

    samples = random_samples(2, seed=5)
    al._REPLAY_STATE.update(step=None, last=None)
    with pytest.raises(RuntimeError, match=r"micro-batch mixes rows of predicted mini-batches \[0, 1\]"):
        _loss_on(samples, [0, 1], count=2, step=7)
    # two PPO epochs over 2 mini-batches of 2 micro-batches each: a legal order
    for mb in (0, 0, 1, 1, 0, 0, 1, 1):
        _loss_on(samples, [mb, mb], count=2, step=8)
    _loss_on(samples, [0, 0], count=2, step=9)  # a new step starts at 0
    with pytest.raises(RuntimeError, match=r"mini-batch 2 arrived after mini-batch 0"):
        _loss_on(samples, [2, 2], count=3, step=9)
    al._REPLAY_STATE.update(step=None, last=None)
    with pytest.raises(RuntimeError, match=r"mini-batch 1 arrived after mini-batch None"):
        _loss_on(samples, [1, 1], count=2, step=10)  # a step must start with mini-batch 0
    al._REPLAY_STATE.update(step=None, last=None)


def test_micro_batch_scope_with_old_entropy_and_bottom_selection():
    """source=old ranks verl's pre-update `entropy` field, not the current policy's; selection=bottom
    keeps the same count (ceil(0.5 * 4) = 2) at the lowest old entropies."""
    base = dict(plen=2, mask=[1] * 6, old=[-1.0] * 6, lp=[-0.9, -1.2, -0.8, -1.1, -1.0, -0.7], ref=[-1.0] * 6)
    base.update(isw=[1.0] * 6, adv=1.5, keep=[0] * 6)
    # current entropy would keep tokens 0 and 2 (top); the old entropy (below) says tokens 1 and 3
    sample = dict(base, ent=[3.0, 1.0, 2.0, 0.5, 9.0, 9.0], prefix=[1, 1, 1, 1, 0, 0])
    other = dict(base, ent=[0.1] * 6, prefix=[0] * 6, adv=-0.5)
    old_entropy = [[0.1, 5.0, 0.2, 4.0, 0.0, 0.0], [9.0] * 6]
    cfg = actor_config(entropy_coeff=0.0)

    def loss_with(selection, keep):
        block = {"entropy_clip": {"scope": "micro_batch", "top_ratio": 0.5, "selection": selection}}
        mo, data, _, _ = build_batch([sample, other])
        data["entropy"] = _nested(old_entropy, torch.float64)
        loss, metrics = prefix_rft_ppo_loss(cfg, mo, data, prefix_config=from_dict(block, rollout_n=8))
        mo, data, _, _ = build_batch([dict(sample, keep=keep), other])
        ref, _ = prefix_rft_ppo_loss(cfg, mo, data, prefix_config=prefix_config())
        assert loss.item() == pytest.approx(ref.item(), abs=1e-12)
        assert metrics["prefix_rft/kept_demo_tokens"].values[0] == 2

    loss_with("top", [0, 1, 0, 1, 0, 0])
    loss_with("bottom", [1, 0, 1, 0, 0, 0])
    mo, data, _, _ = build_batch([sample, other])  # no old entropy in the batch: a clear error
    with pytest.raises(ValueError, match="needs the old policy's entropy"):
        prefix_rft_ppo_loss(
            cfg, mo, data, prefix_config=from_dict({"entropy_clip": {"scope": "micro_batch"}}, rollout_n=8)
        )


def test_exclude_prefix_through_the_actor_loss_gives_demo_tokens_no_gradient():
    """prefix_tokens=exclude on the actor path (boolean masks, verl's layout): demo tokens get exactly zero
    gradient and the loss equals freeze's (under Dr.GRPO's constant normaliser the denominator is the same)."""
    samples = random_samples(3, seed=11)
    cfg = actor_config(entropy_coeff=0.0, loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=16)
    out = {}
    for mode in ("exclude", "freeze"):
        mo, data, lp, _ = build_batch(samples)
        loss, _ = prefix_rft_ppo_loss(cfg, mo, data, prefix_config=prefix_config(prefix_tokens=mode))
        loss.backward()
        grad = lp.grad
        for i, s in enumerate(samples):
            demo = [j for j, p in enumerate(s["prefix"]) if p]
            assert all(grad[i, j].item() == 0.0 for j in demo), (mode, i)
        out[mode] = loss.item()
    assert out["exclude"] == pytest.approx(out["freeze"], abs=1e-12)


def test_replay_guard_is_off_without_per_mini_batch_ranking_but_the_count_stays():
    """scope=batch / no entropy clipping: the trainer writes only the mini-batch count and step (no ids), so
    verl's per-epoch reshuffle (actor.shuffle=true, ppo_epochs > 1) cannot trip the guard, while the count
    still turns the actor's demo-token counts into step totals."""
    from tensordict import TensorDict

    import prefix_rft.actor_loss as al

    al._REPLAY_STATE.update(step=None, last=None)
    shuffled_epoch_two = TensorDict(
        {
            "prefix_rft_num_minibatches": torch.full((4,), 3, dtype=torch.int64),
            "prefix_rft_step": torch.full((4,), 1, dtype=torch.int64),
        },
        batch_size=4,
    )
    assert al.check_minibatch_replay(shuffled_epoch_two) == 3
    assert al.check_minibatch_replay(TensorDict({}, batch_size=4)) == 1
    with_ids = shuffled_epoch_two.clone()
    with_ids["prefix_rft_minibatch"] = torch.tensor([0, 2, 3, 0])
    with pytest.raises(RuntimeError, match="mixes rows of predicted mini-batches"):
        al.check_minibatch_replay(with_ids)
    al._REPLAY_STATE.update(step=None, last=None)


def test_ranking_by_the_current_entropy_without_it_names_the_fix():
    """A batch of the prefix agent loop chosen per row (not the default loop start-up checks) may reach the loss
    without the current entropy: the error names the key, not an AttributeError."""
    from types import SimpleNamespace

    from prefix_rft.actor_loss import demo_keep_mask

    eclip = SimpleNamespace(
        enable=True, scope="micro_batch", source="current", top_ratio=0.2, selection="top"
    )
    prefix = torch.tensor([[True, True, False]])
    with pytest.raises(ValueError, match="calculate_entropy=true"):
        demo_keep_mask(prefix, None, None, None, eclip)
    keep = demo_keep_mask(prefix, None, torch.tensor([[0.1, 0.9, 0.5]]), None, eclip)
    assert keep.tolist() == [[False, True, False]]
