"""Group-relative advantage estimators (paper appendix A.2: Dr.GRPO over the mixed group).

All ``n`` rollouts of a prompt (hybrid and on-policy) are scored by the same reward and share one
baseline: the group mean. Dr.GRPO drops GRPO's division by the group std; ``norm_by_std=True`` gives
plain GRPO. The prefix-aware variant measures every rollout against the mean of the group's on-policy
rollouts only (a simplification of the authors' prefix-aware estimators, which re-baseline only the demo
tokens; not the paper's default).
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
    scores: torch.Tensor, index: Sequence[Any], norm_by_std: bool = False, eps: float = 1e-6
) -> torch.Tensor:
    """Dr.GRPO advantage (paper A.2): ``A_i = r_i - mean(r_group)``, one value per rollout.

    ``index`` gives each rollout's prompt uid; rollouts with the same uid form a group. A group of one
    gets advantage 0 (its own mean); all-equal rewards give 0. With ``norm_by_std`` the centred score is
    divided by the group's (unbiased) std + ``eps``, as GRPO does (groups of one stay 0).
    """
    _check_scores(scores, index)
    out = torch.zeros_like(scores, dtype=torch.float32)
    for rows in _groups(index).values():
        idx = torch.tensor(rows)
        values = scores[idx].float()
        out[idx] = _normalise(values - values.mean(), values, norm_by_std, eps)
    return out


def prefix_aware_advantage(
    scores: torch.Tensor,
    index: Sequence[Any],
    is_prefixed: torch.Tensor,
    norm_by_std: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Advantage against the mean of the group's on-policy rollouts only (an optional variant, not the paper's).

    ``A_i = r_i - mean(r_j : j in group, j not prefixed)``. The hybrid rollouts are thus compared with
    what the policy achieves on its own. A group without any on-policy rollout falls back to the whole
    group's mean (there is nothing else to compare with). ``norm_by_std`` divides by the whole group's std.
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
