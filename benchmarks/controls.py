"""Control arms of the CPU learning benchmark (not part of the installed package).

``shuffled_reward``: a verl advantage estimator that permutes the rollouts' scores across the whole batch
before the recipe's own estimator (:func:`prefix_rft.advantage.compute_prefix_rft_advantage`, Dr.GRPO)
sees them. The reward then carries no information about which response was right, while its rate, the
rollouts, the optimiser and every other setting stay those of RFT: whatever this arm gains over the base
model is reward-free (sharpening by the update itself), and a method's gain over it is what the reward
taught. The logged scores (``critic/score/mean``) stay the true ones.

Registered when this module is imported: the benchmark adds it to ``VERL_USE_EXTERNAL_MODULES`` (verl
imports those modules on ``import verl`` in every process) and sets ``algorithm.adv_estimator=shuffled_reward``
with the ``rft`` preset. The permutation is seeded by ``PREFIX_RFT_CONTROL_SEED`` (default 0) and the call
count, so a run is reproducible.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import torch
from verl.trainer.ppo.core_algos import register_adv_est

from prefix_rft.advantage import compute_prefix_rft_advantage

ESTIMATOR = "shuffled_reward"
_CALLS = itertools.count()


def shuffle_rows(token_level_rewards: torch.Tensor, seed: int, call: int) -> torch.Tensor:
    """``token_level_rewards`` with its rows (one per rollout) in a seeded random order."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(call))
    perm = torch.randperm(token_level_rewards.shape[0], generator=gen)
    # each row's score sits on its own last response token; the estimator uses only the row sums
    scores = token_level_rewards.sum(dim=-1)[perm]
    out = torch.zeros_like(token_level_rewards)
    out[:, -1] = scores
    return out


@register_adv_est(ESTIMATOR)
def compute_shuffled_reward_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    config: Any = None,
    index: Any = None,
    **kw,
):
    """The recipe's advantage of the batch's scores shuffled across rollouts (see the module docstring)."""
    seed = int(os.environ.get("PREFIX_RFT_CONTROL_SEED", "0"))
    shuffled = shuffle_rows(token_level_rewards, seed, next(_CALLS))
    return compute_prefix_rft_advantage(shuffled, response_mask, config=config, index=index, **kw)
