"""Per-token Prefix-RFT policy loss (paper sec. 3, "unified view" and entropy-based clipping).

Demo-prefix tokens get the *same* PPO weight as generated tokens: the clipped ratio
``pi_theta / pi_old`` (``pi_old`` recomputed by the actor over the whole response, prefix included)
times the shared group advantage, except that the advantage of prefix tokens outside the entropy
keep-mask is zeroed. Options from the authors' code: behaviour prob 1 on the prefix (ratio =
``pi_theta``), LUFFY's policy shaping ``pi / (pi + gamma)``, an extra NLL term on kept prefix tokens
(UFT-style ablation), and leaving prefix tokens out of the entropy bonus.

Everything returns a per-token ``[B, T]`` loss matrix; :func:`aggregate_loss` reduces it exactly like
verl's ``agg_loss`` so the result is invariant to micro-batching and data parallelism.
"""

from __future__ import annotations

import torch

IS_MODES = ("ppo", "behavior_one", "luffy")


def ppo_clipped_loss(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dual-clip PPO per-token loss (Schulman et al. 2017; Ye et al. 2020), as the paper uses (clip 0.2, c = 3).

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
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    is_mode: str = "ppo",
    luffy_gamma: float = 0.1,
    sft_coef: float = 0.0,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token policy loss of Prefix-RFT (paper sec. 3).

    Continuation tokens: dual-clip PPO with ``ratio = exp(log_prob - old_log_prob)`` (log-ratio clamped to
    [-20, 20] as verl does), multiplied by ``rollout_is_weights`` when given.
    Prefix tokens (``prefix_mask``), with advantage ``A * keep_mask`` (entropy-based clipping: unkept
    demo tokens get advantage 0 but stay in the loss denominator):

    - ``is_mode="ppo"`` (paper): the same dual-clip PPO term as continuation tokens;
    - ``"behavior_one"``: behaviour prob 1, i.e. ``-A * pi_theta`` (no clip: the ratio is <= 1);
    - ``"luffy"``: LUFFY's policy shaping ``-A * pi_theta / (pi_theta + gamma)``.

    ``sft_coef > 0`` adds ``sft_coef * (-log_prob)`` on kept prefix tokens. Rollout IS weights never
    apply to prefix tokens (they were not sampled by the rollout policy).

    As with verl's policy losses, positions outside ``response_mask`` are not zeroed in ``loss_mat`` (that
    would cost a full pass): reduce it with :func:`aggregate_loss` or verl's ``agg_loss``, which mask.

    Returns:
        ``(loss_mat, metrics)``: the ``[B, T]`` loss and detached scalar
        metrics ``pg_clipfrac`` (continuation), ``pg_clipfrac_prefix``, ``pg_clipfrac_lower``, ``ppo_kl``,
        ``kept_frac`` (kept / prefix tokens) and ``prefix_token_frac`` (prefix / response tokens).
    """
    if is_mode not in IS_MODES:
        raise ValueError(f"is_mode must be one of {IS_MODES}, got {is_mode!r}")
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

    if rows.numel() and (is_mode != "ppo" or sft_coef or rollout_is_weights is not None):
        sub = loss[rows]
        if rollout_is_weights is not None:  # the rollout policy did not sample demo tokens: weight 1 there
            sub = torch.where(p_rows, ppo_loss[rows], sub)
        if is_mode != "ppo":
            sub_lp = log_prob[rows]
            prob = torch.exp(sub_lp)
            weight = prob if is_mode == "behavior_one" else prob / (prob + luffy_gamma)
            sub = torch.where(p_rows, -adv[rows] * weight, sub)
        if sft_coef:
            sub = sub - sft_coef * log_prob[rows] * kept_rows
        loss = loss.index_copy(0, rows, sub)

    with torch.no_grad():
        n_tokens = mask.sum().clamp(min=1)
        n_prefix = p_rows.sum()
        n_clipped_prefix = (clipped[rows] & p_rows).sum()
        metrics = {
            "pg_clipfrac": ((clipped & mask).sum() - n_clipped_prefix) / (n_tokens - n_prefix).clamp(min=1),
            "pg_clipfrac_prefix": n_clipped_prefix / n_prefix.clamp(min=1),
            "pg_clipfrac_lower": (clipped_lower & mask).sum() / n_tokens,
            "ppo_kl": -(log_ratio.masked_fill(~mask, 0.0).sum()) / n_tokens,
            "kept_frac": kept_rows.sum() / n_prefix.clamp(min=1),
            "prefix_token_frac": n_prefix / n_tokens,
        }
    return loss, metrics


def entropy_loss_mask(
    response_mask: torch.Tensor, prefix_mask: torch.Tensor, entropy_bonus_on_prefix: bool
) -> torch.Tensor:
    """Tokens that receive the entropy bonus: all response tokens, or (authors' "response_only") only
    the generated continuation when ``entropy_bonus_on_prefix`` is False."""
    if entropy_bonus_on_prefix:
        return response_mask
    return response_mask * ~prefix_mask.bool()  # response_mask's dtype; bool in, bool out (no int64 copies)


def aggregate_loss(
    loss_mat: torch.Tensor,
    loss_mask: torch.Tensor,
    loss_agg_mode: str,
    dp_size: int = 1,
    batch_num_tokens: int | torch.Tensor | None = None,
    global_batch_size: int | torch.Tensor | None = None,
    loss_scale_factor: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar; the same modes and normalisation as verl's ``agg_loss``.

    ``batch_num_tokens`` / ``global_batch_size`` are the counts over the *global* (all micro-batches,
    all data-parallel ranks) batch, so per-micro-batch results sum to the whole-batch loss.

    - ``token-mean``: sum over tokens / global token count (* dp_size);
    - ``token-sum``: sum over tokens (* dp_size);
    - ``seq-mean-token-sum``: per-sequence token sum, averaged over (non-empty) sequences;
    - ``seq-mean-token-sum-norm``: the same divided by ``loss_scale_factor`` (default: T);
    - ``seq-mean-token-mean``: per-sequence token mean, averaged over (non-empty) sequences.
    """
    mask = loss_mask.to(loss_mat.dtype)
    masked = torch.where(mask.bool(), loss_mat, torch.zeros_like(loss_mat)) * mask
    if loss_agg_mode == "token-mean":
        if batch_num_tokens is None:
            if dp_size > 1:
                raise ValueError("(global) batch_num_tokens is required when dp_size > 1")
            batch_num_tokens = mask.sum()
        return masked.sum() / batch_num_tokens * dp_size
    if loss_agg_mode == "token-sum":
        return masked.sum() * dp_size
    if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean"):
        tokens = mask.sum(dim=-1)
        seq = masked.sum(dim=-1)
        if loss_agg_mode == "seq-mean-token-mean":
            seq = seq / (tokens + 1e-8)
        seq_mask = (tokens > 0).to(loss_mat.dtype)
        if global_batch_size is None:
            if dp_size > 1:
                raise ValueError("global_batch_size is required when dp_size > 1")
            global_batch_size = seq_mask.sum()
        loss = (seq * seq_mask).sum() / global_batch_size * dp_size
        if loss_agg_mode == "seq-mean-token-sum-norm":
            loss = loss / (loss_scale_factor if loss_scale_factor is not None else loss_mask.shape[-1])
        return loss
    raise ValueError(
        f"invalid loss_agg_mode {loss_agg_mode!r}; expected token-mean, token-sum, seq-mean-token-sum, "
        "seq-mean-token-sum-norm or seq-mean-token-mean"
    )
