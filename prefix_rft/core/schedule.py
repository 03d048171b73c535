"""Prefix-ratio schedule and sampler (paper sec. 3 "prefix sampling" and appendix A.2).

The prefix of a demonstration given to a hybrid rollout is ``L = floor(l * |demo|)`` tokens with
``l ~ U[low_t, high]``. The lower bound ``low_t`` decays from ``low_start`` to ``low_end`` over
``decay_steps`` steps with a cosine (paper A.2), so early training is close to SFT and late training close
to pure RL. Every knob is passed in by the caller (defaults: see ``PrefixRFTConfig.ratio``).

Everything here is a pure function of the global step and a seed, so a resumed run draws exactly the
ratios an uninterrupted run would have drawn.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from prefix_rft.core.modes import SAMPLERS, SCHEDULES


def ratio_lower_bound(
    step: int,
    *,
    schedule: str,
    low_start: float,
    low_end: float,
    decay_steps: int,
    delay_steps: int,
) -> float:
    """Lower bound ``low_t`` of the prefix ratio at global ``step`` (paper A.2).

    cosine: ``low_t = low_end + 0.5 * (low_start - low_end) * (1 + cos(pi * t / decay_steps))``
    for ``0 <= t <= decay_steps`` and ``low_end`` after, where ``t = step - delay_steps``;
    linear: a straight line between the same end points; const: ``low_start`` forever.
    Before ``delay_steps`` the bound stays at ``low_start``. Defaults: see ``PrefixRFTConfig.ratio``.
    """
    if schedule == "const":
        return float(low_start)
    t = min(max(step - delay_steps, 0), decay_steps) / decay_steps
    if schedule == "cosine":
        return float(low_end + 0.5 * (low_start - low_end) * (1.0 + math.cos(math.pi * t)))
    if schedule == "linear":
        return float(low_start + (low_end - low_start) * t)
    raise ValueError(f"unknown prefix-ratio schedule {schedule!r}; expected one of {SCHEDULES}")


def ratio_bounds(step: int, cfg: Any) -> tuple[float, float]:
    """``(low_t, high)`` at ``step`` for a :class:`prefix_rft.config.RatioScheduleConfig`-like ``cfg``.

    ``low_t`` never exceeds ``high`` (paper A.2: the draw is in ``[low_t, high]``).
    """
    low = ratio_lower_bound(
        step,
        schedule=cfg.schedule,
        low_start=cfg.low_start,
        low_end=cfg.low_end,
        decay_steps=cfg.decay_steps,
        delay_steps=cfg.delay_steps,
    )
    return min(low, cfg.high), float(cfg.high)


def stable_seed(*parts: Any) -> int:
    """A 64-bit seed derived from ``parts`` that is identical across processes and Python runs.

    (Python's ``hash`` is salted per process, so it cannot be used for resume-exact draws.)
    """
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def sample_prefix_ratio(step: int, cfg: Any, *, seed: int, uid: Any, sample_index: int) -> float:
    """Draw the prefix ratio ``l`` of one hybrid rollout (paper sec. 3: ``l ~ U[low_t, high]``).

    ``sampler=uniform`` is the paper's draw; ``sampler=beta`` draws ``Beta(alpha, beta)`` and stretches it
    to ``[low_t, high]`` (the authors' code; ``Beta(1, 1)`` equals uniform). The draw is a pure function
    of ``(seed, step, uid, sample_index)``: same inputs, same ratio, in any process.
    """
    low, high = ratio_bounds(step, cfg)
    rng = np.random.default_rng(stable_seed("ratio", seed, step, uid, sample_index))
    if cfg.sampler == "uniform":
        u = rng.random()
    elif cfg.sampler == "beta":
        u = rng.beta(cfg.alpha, cfg.beta)
    else:
        raise ValueError(f"unknown prefix-ratio sampler {cfg.sampler!r}; expected one of {SAMPLERS}")
    return float(low + (high - low) * u)


def choose_demo(num_demos: int, *, seed: int, uid: Any, step: int, sample_index: int) -> int:
    """Index of the demonstration a hybrid rollout uses when a prompt has several (paper A.2: uniform).

    Deterministic in ``(seed, uid, step, sample_index)``. ``num_demos`` must be >= 1.
    """
    if num_demos < 1:
        raise ValueError("choose_demo needs at least one demonstration")
    rng = np.random.default_rng(stable_seed("demo", seed, step, uid, sample_index))
    return int(rng.integers(num_demos))


def keeps_demo(uid: Any, *, seed: int, fraction: float) -> bool:
    """Whether row ``uid`` keeps its demonstrations when only a ``fraction`` of them is used.

    The paper's data-efficiency ablation ("10% of the demos", sec. 4): each row independently keeps its
    demos with probability ``fraction``, decided by a seeded hash of the row identity alone, so the same
    rows keep them at every step, in every process and across resumes. Rows that lose them are trained as
    plain RL on their prompts. ``fraction >= 1`` keeps every row.
    """
    if fraction >= 1.0:
        return True
    return stable_seed("demo_fraction", seed, uid) / 2.0**64 < fraction
