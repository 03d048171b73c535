"""The ``prefix_rft`` advantage estimator, registered with verl's ``register_adv_est``.

verl 0.9.1 calls a custom estimator with a fixed set of keywords (``verl/trainer/ppo/ray_trainer.py``
``compute_advantage``): ``token_level_rewards, response_mask, config`` (= ``algorithm``),
``index`` (the prompt uids) and ``reward_baselines`` when present. It has no way to pass a per-row field
such as ``is_prefixed``; the Prefix-RFT trainer therefore opens :func:`prefix_rows` around verl's
``_compute_advantage``, and the estimator reads the rows' flags (``is_prefixed``, and ``prefix_len`` for
``dr_grpo_prefix``: a hybrid rollout's first ``prefix_len`` response tokens are demo tokens) and the
``prefix_rft.advantage`` knobs from that context. Outside it (e.g. under verl's plain trainer) the estimator is the paper's default:
Dr.GRPO over the whole group.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from verl.trainer.ppo.core_algos import register_adv_est

from prefix_rft.config import ADV_MODES, AdvantageConfig
from prefix_rft.core.advantage import dr_grpo_prefix_advantage, group_advantage, on_policy_baseline_advantage
from prefix_rft.verl_config import ADV_ESTIMATOR_NAME as ESTIMATOR_NAME


@dataclass
class _PrefixRows:
    is_prefixed: torch.Tensor | None
    cfg: AdvantageConfig
    prefix_len: torch.Tensor | None = None


_CONTEXT: contextvars.ContextVar[_PrefixRows | None] = contextvars.ContextVar("prefix_rft_rows", default=None)


@contextmanager
def prefix_rows(
    is_prefixed: torch.Tensor | None, cfg: AdvantageConfig, prefix_len: torch.Tensor | None = None
) -> Iterator[None]:
    """Make ``is_prefixed`` and ``prefix_len`` (``[B]``, rows in the order verl passes them) and ``cfg``
    visible to the estimator."""
    token = _CONTEXT.set(_PrefixRows(is_prefixed, cfg, prefix_len))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


@register_adv_est(ESTIMATOR_NAME)
def compute_prefix_rft_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    config: Any = None,
    index: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outcome advantage of every rollout, broadcast over its response tokens (paper A.2).

    ``mode=group`` (default): Dr.GRPO, ``A_i = r_i - mean(r_group)`` over all ``n`` rollouts of a prompt,
    hybrid and on-policy together. ``mode=on_policy_baseline``: baseline = mean of the group's on-policy
    rollouts, on every token (needs ``is_prefixed`` from the trainer). ``mode=dr_grpo_prefix`` (the authors'
    estimator): demo tokens ``r - mean(on-policy)``, a hybrid rollout's generated tokens its raw ``r`` (needs
    ``is_prefixed`` and ``prefix_len``). Returns ``(advantages, returns)``, both ``[B, T]``.
    """
    if index is None:
        raise ValueError(
            "the prefix_rft advantage needs the prompt uids (`index`); verl passes them as `uid`"
        )
    ctx = _CONTEXT.get()
    cfg = ctx.cfg if ctx is not None else AdvantageConfig()
    scores = token_level_rewards.sum(dim=-1)
    uids = list(index)
    if cfg.mode in ("on_policy_baseline", "dr_grpo_prefix"):
        if (
            ctx is None
            or ctx.is_prefixed is None
            or (cfg.mode == "dr_grpo_prefix" and ctx.prefix_len is None)
        ):
            raise ValueError(
                f"prefix_rft.advantage.mode={cfg.mode} needs each rollout's is_prefixed flag (and prefix_len), "
                "which only the Prefix-RFT trainer (prefix_rft.trainer.PrefixRFTTrainer) provides. Launch "
                "through recipe/prefix_rft/main_prefix_rft.py, or set prefix_rft.advantage.mode=group."
            )
        if ctx.is_prefixed.shape[0] != scores.shape[0]:
            raise ValueError(
                f"is_prefixed has {ctx.is_prefixed.shape[0]} rows but the batch has {scores.shape[0]}"
            )
        is_prefixed = ctx.is_prefixed.to(scores.device)
        if cfg.mode == "dr_grpo_prefix":
            adv = dr_grpo_prefix_advantage(
                scores, uids, is_prefixed, ctx.prefix_len.to(scores.device), response_mask.shape[-1]
            )
            adv = adv.to(token_level_rewards.device) * response_mask
            return adv, adv
        adv = on_policy_baseline_advantage(scores, uids, is_prefixed, norm_by_std=cfg.norm_by_std)
    elif cfg.mode == "group":
        adv = group_advantage(scores, uids, norm_by_std=cfg.norm_by_std)
    else:  # an AdvantageConfig built without validation: never fall back silently to another estimator
        raise ValueError(f"prefix_rft.advantage.mode={cfg.mode!r} is not one of {ADV_MODES}")
    adv = adv.to(token_level_rewards.device).unsqueeze(-1) * response_mask
    return adv, adv
