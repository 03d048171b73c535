"""The core functions' knobs as production passes them, for the tests that call the core directly.

The core takes every knob from its caller; production reads them off ``PrefixRFTConfig`` (the one source of
each Prefix-RFT default) and verl's actor config (the clip ratios, set by the recipe yaml). These helpers do
the same, so a test that leaves a knob out gets the value a default run uses, never a copy of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from prefix_rft.config import PrefixRFTConfig
from prefix_rft.core.loss import prefix_rft_token_loss

DEFAULTS = PrefixRFTConfig()
RECIPE_YAML = (
    Path(__file__).resolve().parents[1] / "recipe" / "prefix_rft" / "config" / "prefix_rft_trainer.yaml"
)
_ACTOR = yaml.safe_load(RECIPE_YAML.read_text())["actor_rollout_ref"]["actor"]
CLIP = {key: _ACTOR[key] for key in ("clip_ratio_low", "clip_ratio_high", "clip_ratio_c")}
"""The recipe's PPO clip settings (``actor_rollout_ref.actor.clip_ratio_*``)."""


def schedule_kwargs(**overrides: Any) -> dict[str, Any]:
    """``ratio_lower_bound``'s keywords from ``PrefixRFTConfig.ratio``, with ``overrides`` applied."""
    r = DEFAULTS.ratio
    kwargs = {
        "schedule": r.schedule,
        "low_start": r.low_start,
        "low_end": r.low_end,
        "decay_steps": r.decay_steps,
        "delay_steps": r.delay_steps,
    }
    return {**kwargs, **overrides}


def loss_kwargs(**overrides: Any) -> dict[str, Any]:
    """``prefix_rft_token_loss``'s knobs: the recipe's clip settings and ``PrefixRFTConfig.loss``."""
    lcfg = DEFAULTS.loss
    kwargs = {
        **CLIP,
        "is_mode": lcfg.is_mode,
        "luffy_gamma": lcfg.luffy_gamma,
        "sft_coef": lcfg.sft_coef,
        "prefix_clip": lcfg.prefix_clip,
        "prefix_tokens": lcfg.prefix_tokens,
    }
    return {**kwargs, **overrides}


def token_loss(*args: Any, **overrides: Any):
    """:func:`prefix_rft.core.loss.prefix_rft_token_loss` with :func:`loss_kwargs` (``overrides`` applied)."""
    return prefix_rft_token_loss(*args, **loss_kwargs(**overrides))
