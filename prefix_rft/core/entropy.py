"""Entropy-based clipping of demonstration tokens (paper sec. 3).

Only the top-k% highest-entropy demo-prefix tokens keep their advantage; "we directly set the
corresponding advantages of all other tokens to zero" (k = 20). Ranking is done over each PPO
mini-batch (or the whole batch), by the old policy's per-token entropy, exactly: the top
``ceil(k * N)`` of the ``N`` prefix tokens of a group are kept, ties broken by position (earlier
flat index first) so the selection is deterministic. Continuation tokens are never touched.

Selection is O(N) (``torch.kthvalue``), not a full sort.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def num_kept(num_prefix_tokens: int, top_ratio: float) -> int:
    """``ceil(top_ratio * N)`` (paper: top-k% of the demo tokens), never more than ``N``."""
    # Round before ceil so that e.g. 0.2 * 10 = 2.0000000000000004 keeps 2, not 3.
    return min(num_prefix_tokens, math.ceil(round(top_ratio * num_prefix_tokens, 9)))


def _topk_flat(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest entries of 1-D ``values``; ties go to lower positions. O(N)."""
    n = values.numel()
    keep = torch.zeros(n, dtype=torch.bool, device=values.device)
    if k <= 0 or n == 0:
        return keep
    if k >= n:
        keep[:] = True
        return keep
    # k-th largest value = (n - k + 1)-th smallest.
    # Threshold and compare in one dtype (float64 stays float64; a float32 threshold misses float64 values).
    values = values if values.dtype == torch.float64 else values.float()
    threshold = torch.kthvalue(values, n - k + 1).values
    above = values > threshold
    ties = (values == threshold).nonzero().flatten()
    keep |= above
    keep[ties[: k - int(above.sum())]] = True
    return keep


def select_top_entropy(
    entropy: torch.Tensor,
    prefix_mask: torch.Tensor,
    top_ratio: float,
    group_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Keep-mask of the demo-prefix tokens whose advantage survives entropy clipping (paper sec. 3).

    Args:
        entropy: ``[B, T]`` per-token entropy of the old policy.
        prefix_mask: ``[B, T]`` 1 on demo-prefix tokens (padding must be 0).
        top_ratio: k, the kept fraction (0.2 in the paper).
        group_ids: ``[B]`` ranking group of each row (e.g. its PPO mini-batch); ``None`` = one group.

    Returns:
        ``[B, T]`` bool, True on the ``ceil(k * N_g)`` highest-entropy prefix tokens of every group ``g``.
    """
    if entropy.shape != prefix_mask.shape:
        raise ValueError(f"entropy {tuple(entropy.shape)} and prefix_mask {tuple(prefix_mask.shape)} differ")
    if not 0.0 < top_ratio <= 1.0:
        raise ValueError(f"top_ratio must be in (0, 1], got {top_ratio}")
    is_prefix = prefix_mask.bool()
    keep = torch.zeros_like(is_prefix)
    if group_ids is None:
        group_ids = torch.zeros(entropy.shape[0], dtype=torch.long, device=entropy.device)
    for g in torch.unique(group_ids).tolist():
        rows = (group_ids == g).nonzero().flatten()
        sub_mask = is_prefix[rows]
        values = entropy[rows][sub_mask]  # row-major: flat order = (row, position)
        chosen = _topk_flat(values, num_kept(values.numel(), top_ratio))
        sub_keep = torch.zeros_like(sub_mask)
        sub_keep[sub_mask] = chosen
        keep[rows] = sub_keep
    return keep


def minibatch_group_ids(batch_size: int, mini_batch_size: int) -> torch.Tensor:
    """Mini-batch id of each row when a batch of ``batch_size`` rows is split in order into mini-batches."""
    if mini_batch_size <= 0:
        raise ValueError(f"mini_batch_size must be > 0, got {mini_batch_size}")
    return torch.arange(batch_size) // mini_batch_size


def select_top_entropy_distributed(
    entropy: torch.Tensor,
    prefix_mask: torch.Tensor,
    top_ratio: float,
    all_gather_fn: Callable[[torch.Tensor], list[torch.Tensor]],
    rank: int,
) -> torch.Tensor:
    """Exact top-k keep-mask across data-parallel ranks (paper sec. 3, ranking over the whole mini-batch).

    Each rank holds a shard of the mini-batch. ``all_gather_fn(t)`` returns the list of every rank's
    1-D tensor ``t`` (in rank order; lengths may differ), e.g. ``torch.distributed.all_gather_object``
    wrapped. The prefix-token entropies of all ranks are concatenated in rank order, the global top
    ``ceil(k * N)`` is chosen with the same deterministic tie rule as :func:`select_top_entropy` on the
    concatenated batch, and this rank's part of the mask is returned. The result on each rank equals the
    matching rows of :func:`select_top_entropy` run on the concatenation of all shards.
    """
    is_prefix = prefix_mask.bool()
    local = entropy[is_prefix].float()
    gathered = all_gather_fn(local)
    sizes = [int(t.numel()) for t in gathered]
    values = torch.cat([t.to(local.device).float() for t in gathered]) if gathered else local
    chosen = _topk_flat(values, num_kept(values.numel(), top_ratio))
    start = sum(sizes[:rank])
    keep = torch.zeros_like(is_prefix)
    keep[is_prefix] = chosen[start : start + sizes[rank]]
    return keep
