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
  actor config exactly as ``ppo_loss`` does. The loss does not re-check these per micro-batch: start-up
  (:func:`prefix_rft.verl_config.validate_verl_config`, run by the recipe entry point and the trainer) refuses
  ``loss_agg_mode=seq-mean-token-sum-norm`` (the recipe's Dr.GRPO default) without an explicit
  ``loss_scale_factor`` (verl would fall back to the micro-batch's padded width), and
  :func:`prefix_rft.verl_config.check_actor_loss` what the Prefix-RFT path needs (``policy_loss.loss_mode``,
  ``clip_ratio_c``, the current-policy entropy when ranking by it). Only what the batch itself carries is
  checked here.

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
  verl's ``vanilla`` mode; other ``policy_loss.loss_mode`` values are refused at start-up). With
  ``prefix_mask`` all zero the result equals ``ppo_loss`` (tested to 1e-6 for every loss_agg_mode).

* The steps, one function each: :func:`unpad_model_output` and :func:`padded_batch` (verl's ``ppo_loss``
  opening, plus the prefix fields), :func:`demo_keep_mask` (entropy-based clipping), :func:`token_loss` (the
  policy term), :func:`aggregate` (verl's ``agg_loss`` with the prefix-aware masks) and :func:`loss_metrics`.

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


def _padded_bool(x: torch.Tensor) -> torch.Tensor:
    """A 0/1 per-token field as a padded ``[B, T]`` bool tensor (padding False), without an int64 copy."""
    if x.is_nested:
        return torch.nested.to_padded_tensor(x.bool(), padding=0)
    return x.to(torch.bool, copy=True)  # a copy: the caller's mask is never modified in place


def unpad_model_output(
    config: Any, model_output: dict[str, torch.Tensor], data: TensorDict
) -> tuple[torch.Tensor, torch.Tensor | None, AggregationType]:
    """Padded ``[B, T]`` log-probs and entropy, ``config.global_batch_info`` set, the loss metrics' aggregation.

    Restates the opening of verl's ``verl.workers.utils.losses.ppo_loss`` (a registered policy loss cannot see
    the batch's prefix fields there; docs/UPSTREAM.md): the same unpadding, the same global batch counts for
    ``agg_loss`` (so micro-batch losses sum to the whole batch's), the same SUM/MEAN choice for loss metrics.
    """
    log_prob = no_padding_2_padding(model_output["log_probs"], data)
    entropy = model_output.get("entropy", None)
    if entropy is not None:
        entropy = no_padding_2_padding(entropy, data)
    info = config.global_batch_info
    info["dp_size"] = data["dp_size"]
    info["batch_num_tokens"] = data["batch_num_tokens"]
    info["global_batch_size"] = data["global_batch_size"]
    info["loss_scale_factor"] = config.loss_scale_factor
    global_norm = (
        data["dp_size"] > 1
        or data["batch_num_tokens"] is not None
        or data["global_batch_size"] is not None
        or config.loss_scale_factor is not None
    )
    return log_prob, entropy, AggregationType.SUM if global_norm else AggregationType.MEAN


def padded_batch(data: TensorDict, eclip: Any) -> tuple[TensorDict, dict[str, torch.Tensor]]:
    """The per-token fields the loss reads, padded to ``[B, T]``: ``(batch, bool masks)``.

    verl's ``ppo_loss`` selects ``response_mask``, ``old_log_probs``, ``advantages`` and the optional rollout
    IS weights and ``ref_log_prob``; this adds ``prefix_mask``, the trainer's ``prefix_keep_mask`` (only when
    the keep-mask was ranked on the driver) and verl's old-policy ``entropy`` (only when the micro-batch
    ranks by it). The two 0/1 prefix fields come back as bool masks, not int64: 8x less memory for the call.
    """
    fields = ["response_mask", "old_log_probs", "advantages"]
    fields += [f for f in ("rollout_is_weights", "ref_log_prob") if f in data.keys()]
    if eclip.enable and eclip.scope == "micro_batch" and eclip.source == "old" and "entropy" in data.keys():
        fields.append("entropy")
    mask_fields = ["prefix_mask"]
    if eclip.enable and eclip.scope != "micro_batch" and "prefix_keep_mask" in data.keys():
        mask_fields.append("prefix_keep_mask")
    masks = {f: _padded_bool(data[f]) for f in mask_fields}
    batch = data.select(*fields).to_padded_tensor()
    if "entropy" in batch.keys():
        batch["entropy"] = batch["entropy"].float()
    return batch, masks


def demo_keep_mask(
    prefix_mask: torch.Tensor,
    keep_field: torch.Tensor | None,
    entropy: torch.Tensor | None,
    old_entropy: torch.Tensor | None,
    eclip: Any,
) -> torch.Tensor | None:
    """Which demo-prefix tokens keep their advantage (paper sec. 3, entropy-based clipping); None: every one.

    The paper keeps the top-k% highest-entropy demo tokens of each mini-batch and zeroes the advantage of
    the rest. ``scope=mini_batch``/``batch``: the trainer ranked them on the driver and wrote
    ``prefix_keep_mask`` (``keep_field``), required whenever the micro-batch has demo tokens.
    ``scope=micro_batch`` (the authors' code): ranked here among this micro-batch's demo tokens, by the
    current policy's ``entropy`` (``source=current``) or verl's pre-update ``old_entropy`` (``source=old``).
    """
    if not eclip.enable:
        return None
    if eclip.scope != "micro_batch":
        if keep_field is None and prefix_mask.any():
            raise ValueError(
                "prefix_rft.entropy_clip.enable=true but the batch has no prefix_keep_mask: the "
                "trainer must write it to TransferQueue before update_actor (or set "
                "prefix_rft.entropy_clip.enable=false to train on every demo token)"
            )
        return keep_field
    if eclip.source == "current":
        # start-up checks this for the recipe's default agent loop; a per-row loop may not be
        if entropy is None:
            raise ValueError(
                "prefix_rft.entropy_clip.source=current ranks demo tokens by the current policy's entropy and "
                "the model output has none: set actor_rollout_ref.actor.calculate_entropy=true"
            )
        rank_by = entropy.detach()
    elif old_entropy is None:
        raise ValueError(
            "prefix_rft.entropy_clip.source=old with scope=micro_batch needs the old policy's entropy "
            "(`entropy`) in the actor batch, and it has none; set prefix_rft.entropy_clip.source=current "
            "or scope=mini_batch"
        )
    else:
        rank_by = old_entropy
    return select_demo_tokens(rank_by, prefix_mask, eclip.top_ratio, eclip.selection)


def token_loss(
    log_prob: torch.Tensor,
    batch: TensorDict,
    response_mask: torch.Tensor,
    prefix_mask: torch.Tensor,
    keep_mask: torch.Tensor | None,
    config: Any,
    lcfg: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The per-token policy term of paper sec. 3: :func:`prefix_rft.core.loss.prefix_rft_token_loss`.

    Demo and generated tokens get the same dual-clip PPO weight (or the ``loss.is_mode`` variant), unkept
    demo tokens advantage 0. The clip ratios are read as verl's ``compute_policy_loss_vanilla``
    (``verl.trainer.ppo.core_algos``) reads them: ``clip_ratio_low``/``_high`` falling back to ``clip_ratio``.
    """
    clip_ratio = config.clip_ratio
    return prefix_rft_token_loss(
        log_prob,
        batch["old_log_probs"],
        batch["advantages"],
        response_mask,
        prefix_mask,
        keep_mask,
        clip_ratio_low=config.clip_ratio_low if config.clip_ratio_low is not None else clip_ratio,
        clip_ratio_high=config.clip_ratio_high if config.clip_ratio_high is not None else clip_ratio,
        clip_ratio_c=config.get("clip_ratio_c", 3.0),
        is_mode=lcfg.is_mode,
        luffy_gamma=lcfg.luffy_gamma,
        sft_coef=lcfg.sft_coef,
        rollout_is_weights=batch.get("rollout_is_weights", None),
        prefix_clip=lcfg.resolved_prefix_clip(),
        prefix_tokens=lcfg.prefix_tokens,
    )


def aggregate(
    terms: dict[str, torch.Tensor | None],
    batch: TensorDict,
    response_mask: torch.Tensor,
    prefix_mask: torch.Tensor,
    config: Any,
    lcfg: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The scalar loss: policy term, minus the entropy bonus, plus the KL loss, each reduced by verl's ``agg_loss``.

    Restates the tail of verl's ``verl.workers.utils.losses.ppo_loss`` (same coefficients, same
    ``config.global_batch_info``) with Prefix-RFT's masks: the entropy bonus skips demo tokens unless
    ``loss.entropy_bonus_on_prefix`` (the authors' "response_only"), and ``prefix_tokens=exclude`` (the paper's
    "exclude the prefix from the loss" ablation) drops demo tokens from every mask. Unkept demo tokens stay in the
    denominator, as in the paper's code. ``terms`` holds the ``[B, T]`` ``loss_mat``, the padded current
    ``entropy`` (or None) and ``log_prob``; ``loss_mat`` is popped, so it is freed before the other terms.
    Returns ``(loss, {metric key: aggregated term})``.
    """
    agg = functools.partial(agg_loss, loss_agg_mode=config.loss_agg_mode, **config.global_batch_info)
    agg_mask = aggregation_mask(response_mask, prefix_mask, lcfg.prefix_tokens)
    pg_loss = agg(loss_mat=terms.pop("loss_mat"), loss_mask=agg_mask)
    loss, out = pg_loss, {"actor/pg_loss": pg_loss}
    if terms["entropy"] is not None:
        entropy_mask = entropy_loss_mask(response_mask, prefix_mask, lcfg.entropy_bonus_on_prefix) & agg_mask
        out["actor/entropy_loss"] = agg(loss_mat=terms["entropy"], loss_mask=entropy_mask)
        del entropy_mask
        loss = loss - config.entropy_coeff * out["actor/entropy_loss"]
    if config.use_kl_loss:
        if "ref_log_prob" not in batch.keys():
            raise ValueError("actor_rollout_ref.actor.use_kl_loss=true but the batch has no ref_log_prob")
        kld = kl_penalty(
            logprob=terms["log_prob"], ref_logprob=batch["ref_log_prob"], kl_penalty=config.kl_loss_type
        )
        out["kl_loss"] = agg(loss_mat=kld, loss_mask=agg_mask)
        loss = loss + out["kl_loss"] * config.kl_loss_coef
    return loss, out


def loss_metrics(
    core: dict[str, torch.Tensor],
    losses: dict[str, torch.Tensor],
    prefix_mask: torch.Tensor,
    keep_mask: torch.Tensor | None,
    config: Any,
    num_minibatches: int,
    aggregation: AggregationType,
) -> dict[str, Any]:
    """verl's actor metrics plus the ``prefix_rft/`` ones (module docstring), every key on every micro-batch.

    ``actor/pg_clipfrac`` is over all response tokens as in verl; the continuation's and the demo tokens'
    own clip fractions come from the core. Demo-token counts are step totals: verl averages each SUM metric
    over dp ranks and sums it over a mini-batch's micro-batches (``Metric.aggregate_dp``), then the trainer
    averages the mini-batches (``reduce_metrics``), so each micro-batch reports count * dp_size * mini-batches.
    """
    prefix_frac = core["prefix_token_frac"]
    clipfrac_all = core["pg_clipfrac"] * (1 - prefix_frac) + core["pg_clipfrac_prefix"] * prefix_frac
    pg_metrics = {
        "actor/pg_clipfrac": clipfrac_all.item(),
        "actor/ppo_kl": core["ppo_kl"].item(),
        "actor/pg_clipfrac_lower": core["pg_clipfrac_lower"].item(),
        "prefix_rft/pg_clipfrac_continuation": core["pg_clipfrac"].item(),
        "prefix_rft/prefix_token_frac": prefix_frac.item(),
    }
    metrics: dict[str, Any] = dict(Metric.from_dict(pg_metrics, aggregation=AggregationType.MEAN))
    scale = int(config.global_batch_info["dp_size"]) * num_minibatches
    n_demo = prefix_mask.sum()
    counts = {
        "prefix_rft/demo_tokens": n_demo,
        "prefix_rft/kept_demo_tokens": n_demo if keep_mask is None else (keep_mask & prefix_mask).sum(),
        "prefix_rft/clipped_demo_tokens": torch.round(core["pg_clipfrac_prefix"] * n_demo),
    }
    for key, value in counts.items():
        metrics[key] = Metric(value=float(value) * scale, aggregation=AggregationType.SUM)
    for key, value in losses.items():
        metrics[key] = Metric(value=value, aggregation=aggregation)
    if "kl_loss" in losses:
        metrics["kl_coef"] = config.kl_loss_coef
    return metrics


def prefix_rft_ppo_loss(
    config: Any,
    model_output: dict[str, torch.Tensor],
    data: TensorDict,
    dp_group: Any = None,
    *,
    prefix_config: PrefixRFTConfig,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Prefix-RFT actor loss with the signature of verl's ``ppo_loss`` (see the module docstring).

    Args:
        config: verl ``ActorConfig`` of the worker (``config.global_batch_info`` is filled here, as verl does),
            checked at start-up by :func:`prefix_rft.verl_config.validate_verl_config`.
        model_output: ``log_probs`` and optionally ``entropy``, nested (no-padding) over prompt+response.
        data: the micro-batch TensorDict (jagged per-token fields plus ``dp_size``, ``batch_num_tokens``,
            ``global_batch_size``).
        dp_group: unused (verl's signature).
        prefix_config: the validated ``prefix_rft`` block; bound by :func:`make_prefix_rft_loss_fn`.

    Returns:
        ``(loss, metrics)`` as ``ppo_loss``.
    """
    if "prefix_mask" not in data.keys():
        if prefix_config.num_prefixed > 0:
            raise ValueError(
                f"prefix_rft.num_prefixed={prefix_config.num_prefixed} but the actor batch has no prefix_mask: "
                "the rollouts did not come from the prefix_rft_agent loop. Set "
                "actor_rollout_ref.rollout.agent.default_agent_loop=prefix_rft_agent (the recipe yaml does)."
            )
        return ppo_loss(config, model_output, data, dp_group)
    num_minibatches = check_minibatch_replay(data)
    log_prob, entropy, aggregation = unpad_model_output(config, model_output, data)
    batch, masks = padded_batch(data, prefix_config.entropy_clip)
    response_mask = batch["response_mask"].to(bool)
    prefix_mask = masks["prefix_mask"]
    prefix_mask &= response_mask  # in place: no third [B, T] mask
    keep_mask = demo_keep_mask(
        prefix_mask,
        masks.get("prefix_keep_mask"),
        entropy,
        batch.get("entropy", None),
        prefix_config.entropy_clip,
    )
    lcfg = prefix_config.loss
    loss_mat, core = token_loss(log_prob, batch, response_mask, prefix_mask, keep_mask, config, lcfg)
    terms = {"loss_mat": loss_mat, "entropy": entropy, "log_prob": log_prob}
    del loss_mat  # `aggregate` pops it: not needed by backward, freed before the entropy and KL terms
    loss, losses = aggregate(terms, batch, response_mask, prefix_mask, config, lcfg)
    return loss, loss_metrics(core, losses, prefix_mask, keep_mask, config, num_minibatches, aggregation)
