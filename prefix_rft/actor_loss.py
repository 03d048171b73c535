"""The actor loss of Prefix-RFT: verl's ``ppo_loss`` with the policy term of paper sec. 3.

Decisions (for the trainer engineer):

* Installation. verl builds ``partial(ppo_loss, config=actor_config)`` on every actor worker; the trainer
  replaces it after the workers are initialised, with ONE call (ONE_TO_ALL dispatch, FSDP/FSDP2 and
  Megatron alike)::

      from verl.utils.config import omega_conf_to_dataclass
      from prefix_rft.actor_loss import make_prefix_rft_loss_fn
      actor_config = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
      prefix_cfg = prefix_rft.config.from_dict(config.prefix_rft, config.actor_rollout_ref.rollout.n)
      self.actor_rollout_wg.set_loss_fn(make_prefix_rft_loss_fn(actor_config, prefix_cfg))

* Where the knobs live. The loss knobs stay in the ``prefix_rft:`` block (``prefix_rft.loss.is_mode``,
  ``luffy_gamma``, ``sft_coef``, ``entropy_bonus_on_prefix``, and ``prefix_rft.entropy_clip.enable``):
  the validated :class:`~prefix_rft.config.PrefixRFTConfig` is bound into the partial and pickled to the
  workers with it. Nothing is added to ``actor_rollout_ref.actor`` (no PolicyLossConfig subclass,
  no yaml duplication); every verl actor knob (clip ratios, ``clip_ratio_c``, ``loss_agg_mode``,
  ``entropy_coeff``, ``use_kl_loss``, ``kl_loss_type``/``coef``, ``loss_scale_factor``) is read from the
  actor config exactly as ``ppo_loss`` does. One addition: ``loss_agg_mode=seq-mean-token-sum-norm`` (the
  recipe's Dr.GRPO default) is refused without an explicit ``loss_scale_factor``
  (:func:`check_loss_scale_factor`), because verl would fall back to the micro-batch's padded width.

* Fields read from ``data`` (jagged per-token tensors, padded with ``to_padded_tensor()`` like
  ``response_mask``): ``prefix_mask`` (written by the agent loop) and ``prefix_keep_mask`` (written by
  the trainer; REQUIRED when ``prefix_rft.entropy_clip.enable`` with scope ``mini_batch``/``batch`` and
  the batch has prefix tokens; ignored when disabled: every prefix token is then kept). With
  ``entropy_clip.scope=micro_batch`` the loss selects the micro-batch's demo tokens itself
  (:func:`prefix_rft.core.entropy.select_demo_tokens`, the trainer's entry point too) and ignores
  ``prefix_keep_mask``; it ranks the entropy ``entropy_clip.source`` names: ``current`` (the authors' code,
  ``model_output["entropy"]``, needs ``actor.calculate_entropy``) or ``old`` (verl's pre-update ``entropy``
  field of the batch).

* Plain batches. A batch without ``prefix_mask`` is handed to verl's own ``ppo_loss`` untouched (any
  ``policy_loss.loss_mode``) only when ``prefix_rft.num_prefixed=0``; with demo prefixes configured it is
  an error (training every demo token with full advantage, silently, is the worst failure mode). With
  ``prefix_mask`` the policy term is :func:`prefix_rft.core.loss.prefix_rft_token_loss` (dual-clip PPO,
  verl's ``vanilla`` mode; other ``policy_loss.loss_mode`` values are refused at start-up by
  :func:`prefix_rft.verl_config.validate_verl_config` and here). With ``prefix_mask`` all zero the result
  equals ``ppo_loss`` (tested to 1e-6 for every loss_agg_mode).

* Everything else is verl's: log-probs/entropy unpadded with ``no_padding_2_padding``, aggregation with
  verl's ``agg_loss(**config.global_batch_info)`` over ``response_mask`` (so unkept prefix tokens stay in
  the denominator, as in the paper's code), rollout IS weights (continuation tokens only), entropy bonus
  (prefix tokens excluded unless ``entropy_bonus_on_prefix``; the denominator is still the global
  token/sequence count, so micro-batch sums stay exact), KL loss on every token of the aggregation mask
  (all response tokens, demo tokens included, except under ``prefix_tokens=exclude``, which drops them).

Metrics: verl's (``actor/pg_loss``, ``actor/pg_clipfrac`` over all response tokens, ``actor/ppo_kl``,
``actor/pg_clipfrac_lower``, ``actor/entropy_loss``, ``kl_loss``, ``kl_coef``) plus, logged as
``actor/prefix_rft/...``: ``pg_clipfrac_continuation`` and ``prefix_token_frac`` (means over micro-batches,
like verl's own ratios) and three exact token counts, the step's totals (summed over its micro-batches,
mini-batches and data-parallel ranks; one PPO epoch): ``demo_tokens``, ``kept_demo_tokens`` (after entropy clipping; with
``scope=micro_batch`` this is the only place the real kept fraction shows) and ``clipped_demo_tokens``.
Every key is emitted by every micro-batch, so verl's data-parallel aggregation (which needs the same
number of values on every rank) always holds.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from tensordict import TensorDict
from verl.trainer.ppo.core_algos import agg_loss, kl_penalty
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import no_padding_2_padding

from prefix_rft.config import PrefixRFTConfig
from prefix_rft.core.entropy import select_demo_tokens
from prefix_rft.core.loss import aggregation_mask, entropy_loss_mask, prefix_rft_token_loss


def make_prefix_rft_loss_fn(actor_config: Any, prefix_config: PrefixRFTConfig) -> functools.partial:
    """The loss function to pass to ``actor_rollout_wg.set_loss_fn`` (same call shape as verl's)."""
    if not isinstance(prefix_config, PrefixRFTConfig):
        raise TypeError(
            "prefix_config must be a PrefixRFTConfig: build it with "
            "prefix_rft.config.from_dict(config.prefix_rft, rollout_n)"
        )
    return functools.partial(prefix_rft_ppo_loss, config=actor_config, prefix_config=prefix_config)


def check_loss_scale_factor(config: Any) -> None:
    """Dr.GRPO's constant normaliser must be a constant: refuse ``seq-mean-token-sum-norm`` without one.

    verl's ``agg_loss`` divides by ``loss_scale_factor`` in that mode and, when it is None, by the padded
    width of the micro-batch it is given. Under dynamic batching that width changes from micro-batch to
    micro-batch, so the step is no longer the whole batch's loss (and not Dr.GRPO's objective).
    """
    if config.loss_agg_mode == "seq-mean-token-sum-norm" and config.loss_scale_factor is None:
        raise ValueError(
            "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm needs a constant "
            "actor_rollout_ref.actor.loss_scale_factor (left null, verl divides by each micro-batch's padded "
            "width). Fix: actor_rollout_ref.actor.loss_scale_factor=${data.max_response_length} (the "
            "recipe yaml's default), or loss_agg_mode=token-mean"
        )


REPLAY_FIELDS = ("prefix_rft_minibatch", "prefix_rft_num_minibatches", "prefix_rft_step")
"""Per-row fields the trainer writes with the keep-mask (``prefix_rft.trainer.MINIBATCH_FIELDS``)."""

_REPLAY_STATE: dict[str, int | None] = {"step": None, "last": None}
"""This worker's last checked (step, mini-batch id): micro-batches arrive in training order."""


def check_minibatch_replay(data: TensorDict) -> int:
    """Fail loudly when the actor's mini-batches are not the ones the trainer predicted; return their count.

    The keep-mask is ranked on the driver over mini-batches predicted by replaying verl's split
    (``prefix_rft.trainer.actor_minibatch_group_ids``). Each row carries its predicted id: a micro-batch
    must hold one id, and on a worker the ids of a step must run ``0, 0, .., 1, .., M-1`` (then ``0`` again
    for the next PPO epoch). Returns ``M`` (1 when the batch has no replay fields, e.g. forward-only).
    """
    if REPLAY_FIELDS[0] not in data.keys():  # not ranked per mini-batch: nothing to check, only the count
        if REPLAY_FIELDS[1] in data.keys():
            return max(int(torch.as_tensor(data[REPLAY_FIELDS[1]]).reshape(-1)[0]), 1)
        return 1
    ids = torch.as_tensor(data[REPLAY_FIELDS[0]]).reshape(-1)
    count = int(torch.as_tensor(data[REPLAY_FIELDS[1]]).reshape(-1)[0])
    step = int(torch.as_tensor(data[REPLAY_FIELDS[2]]).reshape(-1)[0])
    found = sorted({int(i) for i in ids.tolist()})
    if len(found) != 1:
        raise RuntimeError(
            f"step {step}: an actor micro-batch mixes rows of predicted mini-batches {found}: verl formed other "
            "mini-batches than prefix_rft/trainer.py::actor_minibatch_group_ids replays, so the per-mini-batch "
            "entropy ranking is wrong. Fix: update that replay for this verl version, or set "
            "prefix_rft.entropy_clip.scope=batch"
        )
    current, state = found[0], _REPLAY_STATE
    if state["step"] != step:
        expected = {0}
    else:
        last = int(state["last"])
        expected = {last, last + 1} | ({0} if last == count - 1 else set())
    if current not in expected:
        raise RuntimeError(
            f"step {step}: actor mini-batch {current} arrived after mini-batch {state['last']} (expected one "
            f"of {sorted(expected)} of {count}): verl's mini-batch order differs from the trainer's replay "
            "(prefix_rft/trainer.py::actor_minibatch_group_ids). Fix: update that replay for this verl "
            "version, or set prefix_rft.entropy_clip.scope=batch"
        )
    state["step"], state["last"] = step, current
    return max(count, 1)


def _clip_params(config: Any) -> tuple[float, float, float]:
    """Clip ratios exactly as verl's ``compute_policy_loss_vanilla`` reads them."""
    clip_ratio = config.clip_ratio
    low = config.clip_ratio_low if config.clip_ratio_low is not None else clip_ratio
    high = config.clip_ratio_high if config.clip_ratio_high is not None else clip_ratio
    clip_ratio_c = config.get("clip_ratio_c", 3.0)
    if not clip_ratio_c > 1.0:
        raise ValueError(f"actor_rollout_ref.actor.clip_ratio_c={clip_ratio_c} must be > 1.0 (dual-clip PPO)")
    return low, high, clip_ratio_c


def _padded_bool(x: torch.Tensor) -> torch.Tensor:
    """A 0/1 per-token field as a padded ``[B, T]`` bool tensor (padding False), without an int64 copy."""
    if x.is_nested:
        return torch.nested.to_padded_tensor(x.bool(), padding=0)
    return x.to(torch.bool, copy=True)  # a copy: the caller's mask is never modified in place


def prefix_rft_ppo_loss(
    config: Any,
    model_output: dict[str, torch.Tensor],
    data: TensorDict,
    dp_group: Any = None,
    *,
    prefix_config: PrefixRFTConfig | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Prefix-RFT actor loss with the signature of verl's ``ppo_loss`` (see the module docstring).

    Args:
        config: verl ``ActorConfig`` of the worker (``config.global_batch_info`` is filled here, as verl does).
        model_output: ``log_probs`` and optionally ``entropy``, nested (no-padding) over prompt+response.
        data: the micro-batch TensorDict (jagged per-token fields plus ``dp_size``, ``batch_num_tokens``,
            ``global_batch_size``).
        dp_group: unused (verl's signature).
        prefix_config: the validated ``prefix_rft`` block; bound by :func:`make_prefix_rft_loss_fn`.

    Returns:
        ``(loss, metrics)`` as ``ppo_loss``.
    """
    check_loss_scale_factor(config)
    if "prefix_mask" not in data.keys():
        if prefix_config is not None and prefix_config.num_prefixed > 0:
            raise ValueError(
                f"prefix_rft.num_prefixed={prefix_config.num_prefixed} but the actor batch has no prefix_mask: "
                "the rollouts did not come from the prefix_rft_agent loop. Set "
                "actor_rollout_ref.rollout.agent.default_agent_loop=prefix_rft_agent (the recipe yaml does)."
            )
        return ppo_loss(config, model_output, data, dp_group)
    if prefix_config is None:
        raise ValueError(
            "the batch carries prefix_mask but the loss has no prefix_rft config: install it with "
            "actor_rollout_wg.set_loss_fn(make_prefix_rft_loss_fn(actor_config, prefix_cfg))"
        )
    num_minibatches = check_minibatch_replay(data)
    loss_mode = config.policy_loss.get("loss_mode", "vanilla")
    if loss_mode != "vanilla":
        raise ValueError(
            f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode!r} is not supported with "
            "Prefix-RFT batches: its policy term is dual-clip PPO (set loss_mode=vanilla)"
        )

    log_prob = no_padding_2_padding(model_output["log_probs"], data)
    entropy = model_output.get("entropy", None)
    if entropy is not None:
        entropy = no_padding_2_padding(entropy, data)

    # global batch info for loss aggregation (as verl's ppo_loss)
    config.global_batch_info["dp_size"] = data["dp_size"]
    config.global_batch_info["batch_num_tokens"] = data["batch_num_tokens"]
    config.global_batch_info["global_batch_size"] = data["global_batch_size"]
    config.global_batch_info["loss_scale_factor"] = config.loss_scale_factor
    if (
        data["dp_size"] > 1
        or data["batch_num_tokens"] is not None
        or data["global_batch_size"] is not None
        or config.loss_scale_factor is not None
    ):
        metric_aggregation = AggregationType.SUM
    else:
        metric_aggregation = AggregationType.MEAN

    eclip = prefix_config.entropy_clip
    keep_enabled = eclip.enable and eclip.scope != "micro_batch"  # micro_batch: ranked here, below
    fields = ["response_mask", "old_log_probs", "advantages", "prefix_mask"]
    if keep_enabled and "prefix_keep_mask" in data.keys():
        fields.append("prefix_keep_mask")
    if "rollout_is_weights" in data.keys():
        fields.append("rollout_is_weights")
    if "ref_log_prob" in data.keys():
        fields.append("ref_log_prob")
    rank_old_entropy = eclip.enable and eclip.scope == "micro_batch" and eclip.source == "old"
    if rank_old_entropy and "entropy" in data.keys():
        fields.append("entropy")  # verl's old-policy entropy (TransferQueue field `entropy`)
    # The two 0/1 prefix fields are padded as bool, not int64: 8x less memory, live for the whole call.
    masks = {f: _padded_bool(data[f]) for f in ("prefix_mask", "prefix_keep_mask") if f in fields}
    data = data.select(*(f for f in fields if f not in masks)).to_padded_tensor()
    old_entropy = data["entropy"].float() if rank_old_entropy and "entropy" in data.keys() else None

    response_mask = data["response_mask"].to(bool)
    prefix_mask = masks["prefix_mask"]
    prefix_mask &= response_mask  # in place: no third [B, T] mask
    keep_mask = None
    if keep_enabled:
        if "prefix_keep_mask" not in masks:
            if prefix_mask.any():
                raise ValueError(
                    "prefix_rft.entropy_clip.enable=true but the batch has no prefix_keep_mask: the "
                    "trainer must write it to TransferQueue before update_actor (or set "
                    "prefix_rft.entropy_clip.enable=false to train on every demo token)"
                )
        else:
            keep_mask = masks["prefix_keep_mask"]
    elif eclip.enable:
        # scope=micro_batch: rank this micro-batch's demo tokens here, by the entropy_clip.source entropy
        # (current: the authors' code; old: verl's pre-update entropy, written to TransferQueue as `entropy`).
        if eclip.source == "current":
            if entropy is None:
                raise ValueError(
                    "prefix_rft.entropy_clip.source=current ranks demo tokens by the current policy's "
                    "entropy: set actor_rollout_ref.actor.calculate_entropy=true"
                )
            rank_by = entropy.detach()
        else:
            if old_entropy is None:
                raise ValueError(
                    "prefix_rft.entropy_clip.source=old with scope=micro_batch needs the old policy's entropy "
                    "(`entropy`) in the actor batch, and it has none; set prefix_rft.entropy_clip.source=current "
                    "or scope=mini_batch"
                )
            rank_by = old_entropy
        keep_mask = select_demo_tokens(rank_by, prefix_mask, eclip.top_ratio, eclip.selection)

    loss_agg_mode = config.loss_agg_mode
    clip_low, clip_high, clip_c = _clip_params(config)
    lcfg = prefix_config.loss
    loss_mat, core_metrics = prefix_rft_token_loss(
        log_prob,
        data["old_log_probs"],
        data["advantages"],
        response_mask,
        prefix_mask,
        keep_mask,
        clip_ratio_low=clip_low,
        clip_ratio_high=clip_high,
        clip_ratio_c=clip_c,
        is_mode=lcfg.is_mode,
        luffy_gamma=lcfg.luffy_gamma,
        sft_coef=lcfg.sft_coef,
        rollout_is_weights=data.get("rollout_is_weights", None),
        prefix_clip=lcfg.resolved_prefix_clip(),
        prefix_tokens=lcfg.prefix_tokens,
    )
    # prefix_tokens=exclude: demo tokens leave every aggregation mask (PPO, entropy, KL)
    agg_mask = aggregation_mask(response_mask, prefix_mask, lcfg.prefix_tokens)
    pg_loss = agg_loss(
        loss_mat=loss_mat, loss_mask=agg_mask, loss_agg_mode=loss_agg_mode, **config.global_batch_info
    )
    del loss_mat  # not needed by backward: free it before the entropy and KL terms (peak memory)

    prefix_frac = core_metrics["prefix_token_frac"]
    clipfrac_all = (
        core_metrics["pg_clipfrac"] * (1 - prefix_frac) + core_metrics["pg_clipfrac_prefix"] * prefix_frac
    )
    pg_metrics = {
        "actor/pg_clipfrac": clipfrac_all.item(),
        "actor/ppo_kl": core_metrics["ppo_kl"].item(),
        "actor/pg_clipfrac_lower": core_metrics["pg_clipfrac_lower"].item(),
        "prefix_rft/pg_clipfrac_continuation": core_metrics["pg_clipfrac"].item(),
        "prefix_rft/prefix_token_frac": prefix_frac.item(),
    }
    metrics: dict[str, Any] = dict(Metric.from_dict(pg_metrics, aggregation=AggregationType.MEAN))
    # Step totals: verl averages each SUM metric over dp ranks and sums it over a mini-batch's micro-batches
    # (Metric.aggregate_dp), then the trainer averages the mini-batches (reduce_metrics). So each micro-batch
    # reports count * dp_size * mini-batches and the logged value is the step's total (one epoch).
    dp_size = int(config.global_batch_info["dp_size"]) * num_minibatches
    n_demo = prefix_mask.sum()
    counts = {
        "prefix_rft/demo_tokens": n_demo,
        "prefix_rft/kept_demo_tokens": n_demo if keep_mask is None else (keep_mask & prefix_mask).sum(),
        "prefix_rft/clipped_demo_tokens": torch.round(core_metrics["pg_clipfrac_prefix"] * n_demo),
    }
    for key, value in counts.items():
        metrics[key] = Metric(value=float(value) * dp_size, aggregation=AggregationType.SUM)
    metrics["actor/pg_loss"] = Metric(value=pg_loss, aggregation=metric_aggregation)
    policy_loss = pg_loss

    if entropy is not None:
        entropy_mask = entropy_loss_mask(response_mask, prefix_mask, lcfg.entropy_bonus_on_prefix) & agg_mask
        entropy_loss = agg_loss(
            loss_mat=entropy, loss_mask=entropy_mask, loss_agg_mode=loss_agg_mode, **config.global_batch_info
        )
        del entropy_mask
        policy_loss = policy_loss - config.entropy_coeff * entropy_loss
        metrics["actor/entropy_loss"] = Metric(value=entropy_loss, aggregation=metric_aggregation)

    if config.use_kl_loss:
        if "ref_log_prob" not in data.keys():
            raise ValueError("actor_rollout_ref.actor.use_kl_loss=true but the batch has no ref_log_prob")
        kld = kl_penalty(logprob=log_prob, ref_logprob=data["ref_log_prob"], kl_penalty=config.kl_loss_type)
        kl_loss = agg_loss(
            loss_mat=kld, loss_mask=agg_mask, loss_agg_mode=loss_agg_mode, **config.global_batch_info
        )
        policy_loss = policy_loss + kl_loss * config.kl_loss_coef
        metrics["kl_loss"] = Metric(value=kl_loss, aggregation=metric_aggregation)
        metrics["kl_coef"] = config.kl_loss_coef

    return policy_loss, metrics
