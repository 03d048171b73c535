"""The names of the modes the core's functions accept, with no torch or numpy import.

:mod:`prefix_rft.config` validates every ``prefix_rft.*`` choice against these tuples, so checking a config
(``main_prefix_rft.py --cfg job``, the launchers' dry runs) never loads torch. The modules that use them
(:mod:`prefix_rft.core.entropy`, :mod:`prefix_rft.core.loss`, :mod:`prefix_rft.core.schedule`) import them
from here.
"""

SELECTIONS = ("top", "random", "bottom")
"""Which demo tokens keep their advantage (paper sec. 3): highest entropy (the paper), a seeded random choice,
lowest entropy (its ablations)."""

IS_MODES = ("ppo", "behavior_one", "luffy")
"""Importance ratio of demo-prefix tokens: PPO's clipped ratio (the paper), behaviour policy taken as 1, or
LUFFY's shaped ratio."""

PREFIX_TOKEN_MODES = ("train", "freeze", "exclude")
"""What the loss does with demo-prefix tokens: train them (the paper), freeze them (no gradient, still in the
denominator), or exclude them (out of the loss and its denominator)."""

SCHEDULES = ("cosine", "linear", "const")
"""Shapes of the prefix-ratio lower bound's decay (paper appendix A.2: cosine)."""

SAMPLERS = ("uniform", "beta")
"""Draws of the prefix ratio in ``[low_t, high]`` (paper sec. 3: uniform)."""
