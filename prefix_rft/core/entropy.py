"""Entropy-based clipping of demonstration tokens (paper sec. 3).

Only the top-k% highest-entropy demo-prefix tokens keep their advantage; "we directly set the
corresponding advantages of all other tokens to zero" (k: ``PrefixRFTConfig.entropy_clip.top_ratio``).
Ranking is done over each PPO mini-batch (or the whole batch), by the old policy's per-token entropy,
exactly: the top ``ceil(k * N)`` of the ``N`` prefix tokens of a group are kept, ties broken by position
(earlier flat index first) so the selection is deterministic. Continuation tokens are never touched.

Selection is O(N) (``torch.kthvalue``), not a full sort.

One entry point, :func:`select_demo_tokens`, serves the trainer (old-policy entropy, per mini-batch or
batch, on the driver) and the actor loss (per micro-batch). Its ``selection`` mode is ``top`` (the paper),
``random`` (a seeded uniform choice) or ``bottom`` (lowest entropy: the paper's ablations); every mode
keeps exactly ``ceil(k * N_g)`` demo tokens of each group, so the ablations differ only in *which* tokens
are kept, never in how many. Continuation tokens are never touched in any mode.
"""

from __future__ import annotations

import math

import torch

from prefix_rft.core.modes import SELECTIONS


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


def select_demo_tokens(
    entropy: torch.Tensor,
    prefix_mask: torch.Tensor,
    top_ratio: float,
    selection: str,
    group_ids: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Keep-mask of the demo-prefix tokens whose advantage survives entropy clipping (paper sec. 3).

    The one home of the selection the recipe uses: the trainer and the actor loss both call it.

    Args:
        entropy: ``[B, T]`` per-token entropy (the caller decides whose: old or current policy).
        prefix_mask: ``[B, T]`` 1 on demo-prefix tokens (padding must be 0).
        top_ratio: k, the kept fraction (default: see ``PrefixRFTConfig.entropy_clip.top_ratio``).
        selection: ``top`` (paper: the highest-entropy tokens), ``random`` (a uniform choice seeded by
            ``seed``; ``entropy`` is not read) or ``bottom`` (the lowest-entropy tokens). Ties go to the
            earlier flat index (row-major within the group) in every mode.
        group_ids: ``[B]`` ranking group of each row (e.g. its PPO mini-batch); ``None`` = one group.
        seed: seed of ``selection=random`` (same seed and inputs, same mask); unused otherwise.

    Returns:
        ``[B, T]`` bool, True on exactly ``ceil(k * N_g)`` prefix tokens of every group ``g`` whatever the
        ``selection``; never True outside ``prefix_mask``.
    """
    if entropy.shape != prefix_mask.shape:
        raise ValueError(f"entropy {tuple(entropy.shape)} and prefix_mask {tuple(prefix_mask.shape)} differ")
    if not 0.0 < top_ratio <= 1.0:
        raise ValueError(f"top_ratio must be in (0, 1], got {top_ratio}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    is_prefix = prefix_mask.bool()
    keep = torch.zeros_like(is_prefix)
    if group_ids is None:
        group_ids = torch.zeros(entropy.shape[0], dtype=torch.long, device=entropy.device)
    generator = torch.Generator().manual_seed(int(seed) % 2**63) if selection == "random" else None
    for g in torch.unique(group_ids).tolist():
        rows = (group_ids == g).nonzero().flatten()
        sub_mask = is_prefix[rows]
        n = int(sub_mask.sum())
        if selection == "random":
            values = torch.rand(n, generator=generator).to(entropy.device)
        else:
            values = entropy[rows][sub_mask]  # row-major: flat order = (row, position)
            if selection == "bottom":
                values = -values
        chosen = _topk_flat(values, num_kept(n, top_ratio))
        sub_keep = torch.zeros_like(sub_mask)
        sub_keep[sub_mask] = chosen
        keep[rows] = sub_keep
    return keep


def minibatch_group_ids(batch_size: int, mini_batch_size: int) -> torch.Tensor:
    """Mini-batch id of each row when a batch of ``batch_size`` rows is split in order into mini-batches."""
    if mini_batch_size <= 0:
        raise ValueError(f"mini_batch_size must be > 0, got {mini_batch_size}")
    return torch.arange(batch_size) // mini_batch_size
