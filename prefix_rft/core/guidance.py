"""Per-prompt guidance: which prompts get their demonstration prefix, and how long it is.

The paper (sec. 3, A.2) gives every training prompt its ``num_prefixed`` hybrid rollouts, with a prefix ratio
drawn from one global schedule (``guidance.mode=schedule``, the default). Work after the paper makes the
guidance per prompt: BREAD (arXiv 2506.17211) adds an expert prefix only when a prompt's own rollouts all
fail; SEELE (arXiv 2509.06923) fits each prompt's hint length to hold its success near 50%. The two rules
below are this recipe's versions of them. Everything here is pure Python: the state of a prompt, the decision
taken before its rollouts, and the update after they are scored.

Per prompt ``p`` the table keeps (one home, on the trainer's driver; saved with every checkpoint):

* ``S_p``: the running success rate of its **on-policy** rollouts (no prefix), updated after each visit with
  ``S_p <- x`` on the first visit and ``S_p <- (1 - beta) S_p + beta x`` after (``beta = success_ema``), where
  ``x`` is the fraction of the visit's on-policy rollouts scoring at least ``success_score``;
* ``r_p``: its own prefix ratio (``adaptive`` only), starting at ``init_ratio`` and moved after each visit by

      r_p <- clip(r_p + eta * (target - y), 0, max_ratio)

  (``eta = step_size``), where ``y`` is the success rate of the visit's hybrid rollouts (the on-policy
  rollouts' when the prompt was not guided). A failed hybrid rollout (``y = 0``) lengthens the prefix by
  ``eta * target``, a success (``y = 1``) shortens it by ``eta * (1 - target)``: the ratio settles where the
  hybrid rollouts succeed ``target`` of the time;
* ``visits``: how many training steps have scored it.

Decisions, before the prompt's rollouts are generated:

* ``on_failure`` (BREAD's rule with ``threshold=0``): guided iff ``S_p <= threshold``; the ratio is drawn from
  the global schedule, as in the paper.
* ``adaptive``: guided iff ``S_p < target`` (a prompt the policy solves on its own at least ``target`` of the
  time gets no prefix) and its ratio ``r_p`` (capped by the schedule's ``low_t`` when ``cap_by_schedule``) is
  above 0; the hybrid rollouts use exactly that ratio.
* Cold start (no on-policy rollout scored yet): ``cold_start=guide`` treats the prompt as failed (guided, with
  ``init_ratio`` in ``adaptive``), ``skip`` as solved (no prefix until its first visit says otherwise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GUIDANCE_MODES = ("schedule", "on_failure", "adaptive")
COLD_START_RULES = ("guide", "skip")
STATE_VERSION = 1


@dataclass
class PromptState:
    """What the table knows of one prompt (see the module docstring for the update rules)."""

    visits: int = 0
    success: float | None = None  # S_p, None until an on-policy rollout of the prompt was scored
    ratio: float | None = None  # r_p (adaptive), None until the first decision
    last_hybrid_success: float | None = None  # y of the last visit that had hybrid rollouts


@dataclass(frozen=True)
class Decision:
    """Whether a prompt's ``num_prefixed`` sessions start from a demo prefix, and at which ratio.

    ``ratio=None`` means: draw it from the global schedule (the paper's sampler)."""

    guided: bool
    ratio: float | None = None


def success_rate(scores: Iterable[float], success_score: float) -> float | None:
    """Fraction of ``scores`` at or above ``success_score`` (``None`` for no score)."""
    scores = list(scores)
    if not scores:
        return None
    return sum(float(s) >= success_score for s in scores) / len(scores)


def running_success(previous: float | None, observed: float | None, ema: float) -> float | None:
    """``S <- observed`` on the first observation, ``(1 - ema) * S + ema * observed`` after; unchanged on none."""
    if observed is None:
        return previous
    if previous is None:
        return float(observed)
    return float((1.0 - ema) * previous + ema * observed)


RATIO_DECIMALS = 12
"""Ratios are rounded to this many decimals after each step, so that steps that cancel in exact arithmetic
(e.g. five successes of 0.1 from 0.5) reach exactly 0 and the prompt stops being guided."""


def adaptive_ratio(ratio: float, observed: float, target: float, step_size: float, max_ratio: float) -> float:
    """One controller step: ``clip(ratio + step_size * (target - observed), 0, max_ratio)``, rounded to
    :data:`RATIO_DECIMALS` decimals."""
    return float(min(max(round(ratio + step_size * (target - observed), RATIO_DECIMALS), 0.0), max_ratio))


def decide(state: PromptState, cfg: Any, low_t: float) -> Decision:
    """The guidance of one prompt at this step, from its state (``cfg``: a ``GuidanceConfig``-like object).

    ``low_t`` is the global schedule's lower bound at this step (the cap of ``cap_by_schedule``)."""
    if cfg.mode == "schedule":
        return Decision(True)
    if state.success is None and cfg.cold_start == "skip":
        return Decision(False)
    if cfg.mode == "on_failure":
        return Decision(state.success is None or state.success <= cfg.threshold)
    if cfg.mode != "adaptive":
        raise ValueError(f"unknown guidance mode {cfg.mode!r}; expected one of {GUIDANCE_MODES}")
    if state.success is not None and state.success >= cfg.target:
        return Decision(False)
    ratio = cfg.init_ratio if state.ratio is None else state.ratio
    if cfg.cap_by_schedule:
        ratio = min(ratio, low_t)
    return Decision(ratio > 0.0, ratio if ratio > 0.0 else None)


def update(state: PromptState, cfg: Any, on_policy: Iterable[float], hybrid: Iterable[float]) -> PromptState:
    """The prompt's state after a visit whose rollouts scored ``on_policy`` (no prefix) and ``hybrid``."""
    x = success_rate(on_policy, cfg.success_score)
    y = success_rate(hybrid, cfg.success_score)
    new = dataclasses.replace(state, visits=state.visits + 1)
    new.success = running_success(state.success, x, cfg.success_ema)
    if y is not None:
        new.last_hybrid_success = y
    if cfg.mode == "adaptive":
        ratio = cfg.init_ratio if state.ratio is None else state.ratio
        observed = y if y is not None else x
        new.ratio = (
            ratio
            if observed is None
            else adaptive_ratio(ratio, observed, cfg.target, cfg.step_size, cfg.max_ratio)
        )
    return new


class GuidanceTable:
    """The per-prompt guidance state of a run, keyed by a stable row id of the training set.

    One instance lives on the trainer's driver; agent-loop workers only read the :class:`Decision` each
    training row carries, so several workers and nodes never hold copies of it. ``state_dict`` /
    ``load_state_dict`` round-trip it exactly (JSON: floats are written with full precision)."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.rows: dict[str, PromptState] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def state(self, row_id: str) -> PromptState:
        """The prompt's state (a fresh one for a prompt never seen)."""
        return self.rows.get(row_id, PromptState())

    def decide(self, row_id: str, low_t: float) -> Decision:
        """The prompt's guidance at this step (see :func:`decide`)."""
        return decide(self.state(row_id), self.cfg, low_t)

    def update(self, row_id: str, on_policy: Iterable[float], hybrid: Iterable[float]) -> PromptState:
        """Record a visit's scores (see :func:`update`); returns the new state."""
        self.rows[row_id] = update(self.state(row_id), self.cfg, on_policy, hybrid)
        return self.rows[row_id]

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy of the table (with the mode it was built for)."""
        return {
            "version": STATE_VERSION,
            "mode": self.cfg.mode,
            "rows": {rid: dataclasses.asdict(s) for rid, s in sorted(self.rows.items())},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the table with ``state`` (from :meth:`state_dict`)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"guidance state version {state.get('version')!r}; this code reads {STATE_VERSION}"
            )
        self.rows = {rid: PromptState(**row) for rid, row in state["rows"].items()}

    def summary(self) -> dict[str, float]:
        """Table-wide figures: prompts seen, mean running success, share of prompts at ratio 0 (adaptive)."""
        seen = [s.success for s in self.rows.values() if s.success is not None]
        ratios = [s.ratio for s in self.rows.values() if s.ratio is not None]
        return {
            "prompts_seen": float(len(self.rows)),
            "success_mean": sum(seen) / len(seen) if seen else 0.0,
            "ratio_zero_frac": sum(r == 0.0 for r in ratios) / len(ratios) if ratios else 0.0,
        }
