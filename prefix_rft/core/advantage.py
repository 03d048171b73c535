"""Group-relative advantage estimators (paper appendix A.2: Dr.GRPO over the mixed group).

All ``n`` rollouts of a prompt (hybrid and on-policy) are scored by the same reward and share one
baseline: the group mean. Dr.GRPO drops GRPO's division by the group std; ``norm_by_std=True`` gives
plain GRPO. Two optional variants (not the paper's default):

* :func:`on_policy_baseline_advantage` measures every token of every rollout against the mean of the
  group's on-policy rollouts only;
* :func:`dr_grpo_prefix_advantage` is the authors' ``dr_grpo_prefix`` estimator: demo tokens against the
  on-policy mean, the hybrid rollout's own generated tokens with its raw reward.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch


def _groups(index: Sequence[Any] | Any) -> dict[Any, list[int]]:
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, uid in enumerate(list(index)):
        groups[uid].append(i)
    return groups


def _check_scores(scores: torch.Tensor, index: Sequence[Any]) -> None:
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (one score per rollout), got shape {tuple(scores.shape)}")
    if len(index) != scores.shape[0]:
        raise ValueError(f"index has {len(index)} entries but there are {scores.shape[0]} scores")
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        raise ValueError(
            f"reward score of rollout {i} (uid={list(index)[i]!r}) is {scores[i].item()}; {len(bad)} rollout(s) "
            "have non-finite scores. Check the reward function for that prompt: it must return a finite number."
        )


def _normalise(centred: torch.Tensor, values: torch.Tensor, norm_by_std: bool, eps: float) -> torch.Tensor:
    if not norm_by_std or values.numel() < 2:
        return centred
    return centred / (values.std() + eps)


def group_advantage(
    scores: torch.Tensor, index: Sequence[Any], *, norm_by_std: bool, eps: float = 1e-6
) -> torch.Tensor:
    """Dr.GRPO advantage (paper A.2): ``A_i = r_i - mean(r_group)``, one value per rollout.

    ``index`` gives each rollout's prompt uid; rollouts with the same uid form a group. A group of one
    gets advantage 0 (its own mean); all-equal rewards give 0. With ``norm_by_std`` the centred score is
    divided by the group's (unbiased) std + ``eps``, as GRPO does (groups of one stay 0). ``norm_by_std``:
    see ``PrefixRFTConfig.advantage.norm_by_std``.
    """
    _check_scores(scores, index)
    out = torch.zeros_like(scores, dtype=torch.float32)
    for rows in _groups(index).values():
        idx = torch.tensor(rows)
        values = scores[idx].float()
        out[idx] = _normalise(values - values.mean(), values, norm_by_std, eps)
    return out


def on_policy_baseline_advantage(
    scores: torch.Tensor,
    index: Sequence[Any],
    is_prefixed: torch.Tensor,
    *,
    norm_by_std: bool,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Advantage against the mean of the group's on-policy rollouts only (an optional variant, not the paper's).

    ``A_i = r_i - mean(r_j : j in group, j not prefixed)``, one value per rollout, for every token of it
    (demo and generated alike). The hybrid rollouts are thus compared with what the policy achieves on its
    own. A group without any on-policy rollout falls back to the whole group's mean (there is nothing else to
    compare with). ``norm_by_std`` divides by the whole group's std.
    """
    _check_scores(scores, index)
    if is_prefixed.shape != scores.shape:
        raise ValueError(f"is_prefixed has shape {tuple(is_prefixed.shape)}, scores {tuple(scores.shape)}")
    prefixed = is_prefixed.bool()
    out = torch.zeros_like(scores, dtype=torch.float32)
    for rows in _groups(index).values():
        idx = torch.tensor(rows)
        values = scores[idx].float()
        on_policy = values[~prefixed[idx]]
        baseline = on_policy.mean() if on_policy.numel() > 0 else values.mean()
        out[idx] = _normalise(values - baseline, values, norm_by_std, eps)
    return out


def dr_grpo_prefix_advantage(
    scores: torch.Tensor,
    index: Sequence[Any],
    is_prefixed: torch.Tensor,
    prefix_len: torch.Tensor,
    width: int,
) -> torch.Tensor:
    """The authors' ``dr_grpo_prefix`` estimator, per token (an optional variant, not the paper's default).

    With ``m_g = mean(r_j : j in group g, j not prefixed)`` (Dr.GRPO: no std):

    - on-policy rollout ``i``: every token gets ``r_i - m_g``;
    - hybrid rollout ``i``, its first ``prefix_len_i`` (demo) tokens: ``r_i - m_g``, the demo judged
      against what the policy achieves on its own;
    - hybrid rollout ``i``, its generated continuation: ``r_i``, the raw reward. The authors' code scores
      the continuation as a group of its own (it starts from a context no other rollout shares), and a
      group of one rollout has its mean forced to 0 (verl's GRPO convention for singleton groups), so no
      baseline is subtracted: with 0/1 rewards a correct continuation is pushed up by 1, a wrong one gets
      no gradient.

    A group without on-policy rollouts uses the whole group's mean as ``m_g`` (as
    :func:`on_policy_baseline_advantage`). Returns ``[B, width]``; the caller multiplies by the response mask.
    """
    _check_scores(scores, index)
    if is_prefixed.shape != scores.shape or prefix_len.shape != scores.shape:
        raise ValueError(
            f"is_prefixed {tuple(is_prefixed.shape)} and prefix_len {tuple(prefix_len.shape)} must both have "
            f"the shape of scores {tuple(scores.shape)}"
        )
    prefixed = is_prefixed.bool()
    demo_adv = on_policy_baseline_advantage(scores, index, is_prefixed, norm_by_std=False)  # r_i - m_g
    device = scores.device
    demo_tokens = torch.arange(width, device=device)[None, :] < prefix_len.long().to(device)[:, None]
    raw = scores.float()[:, None].expand(-1, width)
    out = demo_adv.to(device)[:, None].expand(-1, width).clone()
    continuation = prefixed.to(device)[:, None] & ~demo_tokens
    out[continuation] = raw[continuation]
    return out
