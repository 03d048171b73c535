"""Per-token Prefix-RFT policy loss (paper sec. 3, "unified view" and entropy-based clipping).

Demo-prefix tokens get the *same* PPO weight as generated tokens: the clipped ratio
``pi_theta / pi_old`` (``pi_old`` recomputed by the actor over the whole response, prefix included)
times the shared group advantage, except that the advantage of prefix tokens outside the entropy
keep-mask is zeroed. Options from the authors' code: behaviour prob 1 on the prefix (ratio =
``pi_theta``), LUFFY's policy shaping ``pi / (pi + gamma)``, an extra NLL term on kept prefix tokens
(UFT-style ablation), and leaving prefix tokens out of the entropy bonus.

Everything returns a per-token ``[B, T]`` loss matrix; the caller reduces it with verl's ``agg_loss`` (the
actor loss does), whose global token / sequence counts make the result invariant to micro-batching and data
parallelism.
"""

from __future__ import annotations

import torch

from prefix_rft.core.modes import IS_MODES, PREFIX_TOKEN_MODES


def resolve_prefix_clip(is_mode: str, prefix_clip: bool | None) -> bool:
    """Whether demo-token terms are PPO-clipped (the authors' ``enable_clip``, orthogonal to ``is_mode``).

    ``None`` resolves per mode: clipped for ``ppo`` (paper sec. 3: demo tokens get the same clipped PPO
    weight as generated tokens), unclipped for ``behavior_one`` and ``luffy`` (LUFFY never clips its
    off-policy terms).
    """
    if prefix_clip is None:
        return is_mode == "ppo"
    return bool(prefix_clip)


def ppo_clipped_loss(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dual-clip PPO per-token loss (Schulman et al. 2017; Ye et al. 2020), as the paper uses.

    Returns ``(loss, clipped, clipped_lower)``: the loss matrix and the indicators of the ordinary clip
    and of the dual clip (negative advantages only).
    """
    loss1 = -advantages * ratio
    loss2 = -advantages * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    clipped_loss = torch.maximum(loss1, loss2)
    loss3 = -advantages * clip_ratio_c
    negative = advantages < 0
    loss = torch.where(negative, torch.minimum(loss3, clipped_loss), clipped_loss)
    return loss, loss2 > loss1, (clipped_loss > loss3) & negative


def prefix_rft_token_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    prefix_mask: torch.Tensor,
    keep_mask: torch.Tensor | None = None,
    *,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float,
    is_mode: str,
    luffy_gamma: float,
    sft_coef: float,
    prefix_clip: bool | None,
    prefix_tokens: str,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token policy loss of Prefix-RFT (paper sec. 3).

    The clip ratios and ``clip_ratio_c`` are verl's actor settings (``actor_rollout_ref.actor.*``); the
    other knobs are ``PrefixRFTConfig.loss`` (defaults: see there). The caller passes every one.

    Continuation tokens: dual-clip PPO with ``ratio = exp(log_prob - old_log_prob)`` (log-ratio clamped to
    [-20, 20] as verl does), multiplied by ``rollout_is_weights`` when given.
    Prefix tokens (``prefix_mask``), with advantage ``A * keep_mask`` (entropy-based clipping: unkept
    demo tokens get advantage 0 but stay in the loss denominator):

    - ``is_mode="ppo"`` (paper): weight ``w = pi_theta / pi_old``, as for continuation tokens;
    - ``"behavior_one"``: behaviour prob 1, ``w = pi_theta``;
    - ``"luffy"``: LUFFY's policy shaping ``w = pi_theta / (pi_theta + gamma)``.

    ``prefix_clip`` (resolved by :func:`resolve_prefix_clip`; ``None`` = clipped for ``ppo`` only) decides the
    demo-token term: clipped, the dual-clip PPO term of ``w``; unclipped, ``-A * w``. With clipping on,
    ``behavior_one`` and ``luffy`` still feel the lower clip: ``w <= 1`` never reaches ``1 + eps``, but for
    ``A < 0`` and ``w < 1 - eps`` the term is the constant ``-A (1 - eps)``, i.e. zero gradient.

    ``prefix_tokens``: ``train`` (the above), ``freeze`` or ``exclude`` (the demo tokens' policy-gradient
    term is exactly 0, so no gradient; ``exclude`` additionally leaves them out of the aggregation mask,
    which the caller applies with :func:`aggregation_mask`). ``sft_coef > 0`` adds
    ``sft_coef * (-log_prob)`` on kept prefix tokens, in every ``prefix_tokens`` mode. Rollout IS weights
    never apply to prefix tokens (they were not sampled by the rollout policy).

    As with verl's policy losses, positions outside ``response_mask`` are not zeroed in ``loss_mat`` (that
    would cost a full pass): reduce it with verl's ``agg_loss``, which masks.

    Returns:
        ``(loss_mat, metrics)``: the ``[B, T]`` loss and detached scalar
        metrics ``pg_clipfrac`` (continuation), ``pg_clipfrac_prefix``, ``pg_clipfrac_lower``, ``ppo_kl``,
        ``kept_frac`` (kept / prefix tokens) and ``prefix_token_frac`` (prefix / response tokens).
    """
    if is_mode not in IS_MODES:
        raise ValueError(f"is_mode must be one of {IS_MODES}, got {is_mode!r}")
    if prefix_tokens not in PREFIX_TOKEN_MODES:
        raise ValueError(f"prefix_tokens must be one of {PREFIX_TOKEN_MODES}, got {prefix_tokens!r}")
    clip_prefix = resolve_prefix_clip(is_mode, prefix_clip)
    # Demo tokens live in few rows (num_prefixed of every n rollouts): every prefix-only term is computed
    # on those rows alone, so the full-batch work stays that of verl's vanilla PPO loss.
    mask = response_mask.bool()
    prefix = prefix_mask.bool() & mask
    rows = prefix.any(dim=-1).nonzero().flatten()
    p_rows = prefix[rows]
    kept_rows = p_rows if keep_mask is None else p_rows & keep_mask[rows].bool()
    adv = advantages
    if keep_mask is not None and rows.numel():
        # Unkept demo tokens get advantage 0 (paper sec. 3: "set the corresponding advantages ... to zero");
        # they stay in the loss denominator (aggregation uses response_mask).
        adv = advantages.index_copy(0, rows, advantages[rows].masked_fill(p_rows & ~kept_rows, 0.0))

    log_ratio = (log_prob - old_log_prob).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    ppo_loss, clipped, clipped_lower = ppo_clipped_loss(
        ratio, adv, clip_ratio_low, clip_ratio_high, clip_ratio_c
    )
    loss = ppo_loss if rollout_is_weights is None else ppo_loss * rollout_is_weights

    clipped_prefix = clipped
    paper_term = is_mode == "ppo" and clip_prefix and prefix_tokens == "train"
    if rows.numel() and (not paper_term or sft_coef or rollout_is_weights is not None):
        sub = loss[rows]
        if rollout_is_weights is not None:  # the rollout policy did not sample demo tokens: weight 1 there
            sub = torch.where(p_rows, ppo_loss[rows], sub)
        if prefix_tokens != "train":  # freeze / exclude: no policy gradient on demo tokens
            sub = sub.masked_fill(p_rows, 0.0)
            clipped_prefix = clipped.index_copy(0, rows, clipped[rows] & ~p_rows)
        elif not paper_term:
            if is_mode == "ppo":
                weight = ratio[rows]
            else:
                prob = torch.exp(log_prob[rows])
                weight = prob if is_mode == "behavior_one" else prob / (prob + luffy_gamma)
            sub_adv = adv[rows]
            if clip_prefix:
                term, sub_clipped, _ = ppo_clipped_loss(
                    weight, sub_adv, clip_ratio_low, clip_ratio_high, clip_ratio_c
                )
            else:
                term, sub_clipped = -sub_adv * weight, torch.zeros_like(p_rows)
            sub = torch.where(p_rows, term, sub)
            clipped_prefix = clipped.index_copy(0, rows, torch.where(p_rows, sub_clipped, clipped[rows]))
        if sft_coef:
            sub = sub - sft_coef * log_prob[rows] * kept_rows
        loss = loss.index_copy(0, rows, sub)

    with torch.no_grad():
        n_tokens = mask.sum().clamp(min=1)
        n_prefix = p_rows.sum()
        n_clipped_prefix = (clipped_prefix[rows] & p_rows).sum()
        n_clipped_cont = (clipped & mask).sum() - (clipped[rows] & p_rows).sum()
        metrics = {
            "pg_clipfrac": n_clipped_cont / (n_tokens - n_prefix).clamp(min=1),
            "pg_clipfrac_prefix": n_clipped_prefix / n_prefix.clamp(min=1),
            "pg_clipfrac_lower": (clipped_lower & mask).sum() / n_tokens,
            "ppo_kl": -(log_ratio.masked_fill(~mask, 0.0).sum()) / n_tokens,
            "kept_frac": kept_rows.sum() / n_prefix.clamp(min=1),
            "prefix_token_frac": n_prefix / n_tokens,
        }
    return loss, metrics


def aggregation_mask(
    response_mask: torch.Tensor, prefix_mask: torch.Tensor, prefix_tokens: str
) -> torch.Tensor:
    """Tokens that count in the loss aggregation: every response token, or, with ``prefix_tokens="exclude"``
    (the paper's "exclude the prefix from the loss" ablation), only the generated continuation."""
    if prefix_tokens == "exclude":
        generated = ~prefix_mask.bool()
        if response_mask.dtype == torch.bool:  # the actor passes boolean masks (verl's ppo_loss does too)
            return response_mask & generated
        return response_mask * generated.to(response_mask.dtype)
    return response_mask


def entropy_loss_mask(
    response_mask: torch.Tensor, prefix_mask: torch.Tensor, entropy_bonus_on_prefix: bool
) -> torch.Tensor:
    """Tokens that receive the entropy bonus: all response tokens, or (authors' "response_only") only
    the generated continuation when ``entropy_bonus_on_prefix`` is False."""
    if entropy_bonus_on_prefix:
        return response_mask
    return response_mask * ~prefix_mask.bool()  # response_mask's dtype; bool in, bool out (no int64 copies)
