"""The ``prefix_rft:`` config block: every Prefix-RFT knob, its default (the paper's) and its meaning.

The recipe yaml (``recipe/prefix_rft/config/prefix_rft_trainer.yaml``) carries the same keys; the
trainer, the agent loop and the actor loss all build a :class:`PrefixRFTConfig` from that block with
:func:`from_dict`, which validates every value and names the offending key on failure.

No verl import here: the dataclasses are plain Python so the core and the tests can use them freely.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prefix_rft.core.guidance import COLD_START_RULES, GUIDANCE_MODES
from prefix_rft.core.modes import IS_MODES, PREFIX_TOKEN_MODES, SAMPLERS, SCHEDULES
from prefix_rft.core.modes import SELECTIONS as ENTROPY_SELECTIONS

ENTROPY_SCOPES = ("mini_batch", "batch", "micro_batch")
ENTROPY_SOURCES = ("old", "current")
ADV_MODES = ("group", "on_policy_baseline", "dr_grpo_prefix")


class PrefixRFTConfigError(ValueError):
    """A ``prefix_rft.*`` value is out of range; the message names the key and the fix."""


@dataclass
class RatioScheduleConfig:
    """Prefix-ratio schedule (paper sec. 3 / A.2): l ~ U[low_t, high], low_t decays over training.

    Attributes:
        schedule: shape of the lower bound's decay: ``cosine`` (paper), ``linear`` or ``const``
            (low_t = low_start forever). Default ``cosine``.
        low_start: lower bound at step ``delay_steps`` (and before). Default 0.95.
        low_end: lower bound reached after ``delay_steps + decay_steps`` steps. Default 0.05.
        high: constant upper bound of the draw. Default 0.95. Set ``low_start=low_end=high=1.0``
            with ``schedule=const`` for the LUFFY-style whole demonstration.
        decay_steps: length of the decay in global steps. Default 500.
        delay_steps: steps during which low_t stays at ``low_start`` before decaying. Default 0.
        sampler: ``uniform`` (paper) or ``beta`` (a Beta(alpha, beta) draw stretched to [low_t, high]).
        alpha, beta: Beta parameters when ``sampler=beta``. Default 1.0 / 1.0 (= uniform).
        min_prefix_tokens: the prefix is never shorter than this many tokens (if the demo allows).
            Default 1.
    """

    schedule: str = "cosine"
    low_start: float = 0.95
    low_end: float = 0.05
    high: float = 0.95
    decay_steps: int = 500
    delay_steps: int = 0
    sampler: str = "uniform"
    alpha: float = 1.0
    beta: float = 1.0
    min_prefix_tokens: int = 1

    def validate(self) -> None:
        """Check every ``prefix_rft.ratio.*`` value (see :meth:`PrefixRFTConfig.validate`)."""
        _check(self.schedule in SCHEDULES, "ratio.schedule", self.schedule, f"one of {SCHEDULES}")
        for name in ("low_start", "low_end", "high"):
            v = getattr(self, name)
            _check(_is_num(v) and 0.0 <= v <= 1.0, f"ratio.{name}", v, "a float in [0, 1]")
        _check(self.low_start <= self.high, "ratio.low_start", self.low_start, f"<= ratio.high={self.high}")
        _check(self.low_end <= self.high, "ratio.low_end", self.low_end, f"<= ratio.high={self.high}")
        _check(
            _is_int(self.decay_steps) and self.decay_steps >= 1,
            "ratio.decay_steps",
            self.decay_steps,
            "an integer >= 1",
        )
        _check(
            _is_int(self.delay_steps) and self.delay_steps >= 0,
            "ratio.delay_steps",
            self.delay_steps,
            "an integer >= 0",
        )
        _check(self.sampler in SAMPLERS, "ratio.sampler", self.sampler, f"one of {SAMPLERS}")
        _check(_is_num(self.alpha) and self.alpha > 0, "ratio.alpha", self.alpha, "a float > 0")
        _check(_is_num(self.beta) and self.beta > 0, "ratio.beta", self.beta, "a float > 0")
        _check(
            _is_int(self.min_prefix_tokens) and self.min_prefix_tokens >= 0,
            "ratio.min_prefix_tokens",
            self.min_prefix_tokens,
            "an integer >= 0",
        )


@dataclass
class EntropyClipConfig:
    """Entropy-based clipping of demo-prefix tokens (paper sec. 3).

    Attributes:
        enable: keep the advantage only on the highest-entropy demo tokens. Default true.
        top_ratio: fraction k of demo-prefix tokens kept: ceil(k*N) of the N demo tokens of each ranking
            group, chosen by ``selection`` on the entropy ``source`` says. Default 0.2 (the paper's top-20%).
        scope: the group the ranking runs over: ``mini_batch`` (paper: each PPO mini-batch),
            ``batch`` (the whole training batch) or ``micro_batch`` (the authors' code; depends on
            micro-batch size; ranked inside the actor loss). Default ``mini_batch``. The scope says
            only *where* tokens are ranked, never whose entropy: that is ``source``.
        selection: which ``ceil(k*N)`` demo tokens are kept: ``top`` (highest entropy: the paper),
            ``random`` (a seeded uniform choice, the same count) or ``bottom`` (lowest entropy, the same
            count). Continuation tokens are untouched in every mode. Default ``top``.
        source: whose per-token entropy is ranked: ``old`` (the old policy's, computed by verl before the
            update: the paper's) or ``current`` (the policy being updated, as the authors' code does per
            micro-batch; only with ``scope=micro_batch``, the one place it exists). Default ``old``.
    """

    enable: bool = True
    top_ratio: float = 0.2
    scope: str = "mini_batch"
    selection: str = "top"
    source: str = "old"

    def validate(self) -> None:
        """Check every ``prefix_rft.entropy_clip.*`` value (see :meth:`PrefixRFTConfig.validate`)."""
        _check(isinstance(self.enable, bool), "entropy_clip.enable", self.enable, "true or false")
        _check(
            _is_num(self.top_ratio) and 0.0 < self.top_ratio <= 1.0,
            "entropy_clip.top_ratio",
            self.top_ratio,
            "a float in (0, 1]",
        )
        _check(self.scope in ENTROPY_SCOPES, "entropy_clip.scope", self.scope, f"one of {ENTROPY_SCOPES}")
        _check(
            self.selection in ENTROPY_SELECTIONS,
            "entropy_clip.selection",
            self.selection,
            f"one of {ENTROPY_SELECTIONS}",
        )
        _check(
            self.source in ENTROPY_SOURCES, "entropy_clip.source", self.source, f"one of {ENTROPY_SOURCES}"
        )
        _check(
            not (self.source == "current" and self.scope != "micro_batch"),
            "entropy_clip.source",
            self.source,
            "old with entropy_clip.scope=mini_batch or batch (those rankings are decided on the driver "
            "before the update, where only the old policy's entropy exists); or set "
            "entropy_clip.scope=micro_batch to rank the current policy's entropy inside the loss",
        )
        _check(
            not (self.selection == "random" and self.scope == "micro_batch"),
            "entropy_clip.selection",
            self.selection,
            "top or bottom with entropy_clip.scope=micro_batch (a random choice reads no entropy and is "
            "seeded per step on the driver: use entropy_clip.scope=mini_batch or batch)",
        )


@dataclass
class PrefixLossConfig:
    """How demo-prefix tokens enter the PPO loss (paper sec. 3; options from the authors' code).

    Attributes:
        is_mode: importance ratio on prefix tokens: ``ppo`` (pi_theta / pi_old with the recomputed old
            log-prob; the paper), ``behavior_one`` (behaviour prob = 1, ratio = pi_theta) or ``luffy``
            (policy shaping pi / (pi + luffy_gamma)). Default ``ppo``.
        luffy_gamma: gamma of the LUFFY shaping. Default 0.1.
        sft_coef: weight of an extra NLL term on kept prefix tokens (UFT-style ablation). Default 0.0.
        entropy_bonus_on_prefix: include prefix tokens in the entropy bonus. Default false.
        prefix_clip: PPO-clip the demo-token terms (the authors' ``enable_clip``), orthogonal to
            ``is_mode``. Default null: resolved per mode, clipped for ``ppo`` (paper), unclipped for
            ``behavior_one`` and ``luffy`` (as LUFFY). See :meth:`resolved_prefix_clip`.
        prefix_tokens: ``train`` (default: demo tokens get the policy-gradient term), ``freeze`` (no
            policy gradient, still in the loss denominator: the paper's "freeze the prefix" ablation) or
            ``exclude`` (no policy gradient and out of every aggregation mask: "exclude the prefix from
            the loss"). The ``sft_coef`` term is added in every mode (``exclude`` refuses it).
    """

    is_mode: str = "ppo"
    luffy_gamma: float = 0.1
    sft_coef: float = 0.0
    entropy_bonus_on_prefix: bool = False
    prefix_clip: bool | None = None
    prefix_tokens: str = "train"

    def validate(self) -> None:
        """Check every ``prefix_rft.loss.*`` value (see :meth:`PrefixRFTConfig.validate`)."""
        _check(self.is_mode in IS_MODES, "loss.is_mode", self.is_mode, f"one of {IS_MODES}")
        _check(
            _is_num(self.luffy_gamma) and self.luffy_gamma > 0,
            "loss.luffy_gamma",
            self.luffy_gamma,
            "a float > 0",
        )
        _check(_is_num(self.sft_coef) and self.sft_coef >= 0, "loss.sft_coef", self.sft_coef, "a float >= 0")
        _check(
            isinstance(self.entropy_bonus_on_prefix, bool),
            "loss.entropy_bonus_on_prefix",
            self.entropy_bonus_on_prefix,
            "true or false",
        )
        _check(
            self.prefix_clip is None or isinstance(self.prefix_clip, bool),
            "loss.prefix_clip",
            self.prefix_clip,
            "null (per is_mode: true for ppo, false for behavior_one/luffy), true or false",
        )
        _check(
            self.prefix_tokens in PREFIX_TOKEN_MODES,
            "loss.prefix_tokens",
            self.prefix_tokens,
            f"one of {PREFIX_TOKEN_MODES}",
        )
        _check(
            not (self.prefix_tokens == "exclude" and self.sft_coef),
            "loss.sft_coef",
            self.sft_coef,
            "0 with loss.prefix_tokens=exclude (excluded demo tokens carry no term; use prefix_tokens=freeze)",
        )

    def resolved_prefix_clip(self) -> bool:
        """``prefix_clip`` with its null default resolved per ``is_mode`` (one home: the core loss)."""
        from prefix_rft.core.loss import resolve_prefix_clip

        return resolve_prefix_clip(self.is_mode, self.prefix_clip)


@dataclass
class AdvantageConfig:
    """Advantage estimator (paper A.2: Dr.GRPO).

    Attributes:
        mode: ``group`` (Dr.GRPO over the whole mixed group: the paper), ``on_policy_baseline`` (every
            token of every rollout: ``r - mean(on-policy rewards of the group)``) or ``dr_grpo_prefix``
            (the authors' estimator: demo tokens ``r - mean(on-policy rewards)``, the hybrid rollout's
            generated tokens its raw reward ``r``).
            Default ``group``.
        norm_by_std: divide by the group's std (plain GRPO). Default false (Dr.GRPO); not with
            ``dr_grpo_prefix``.
    """

    mode: str = "group"
    norm_by_std: bool = False

    def validate(self) -> None:
        """Check every ``prefix_rft.advantage.*`` value (see :meth:`PrefixRFTConfig.validate`)."""
        _check(self.mode in ADV_MODES, "advantage.mode", self.mode, f"one of {ADV_MODES}")
        _check(isinstance(self.norm_by_std, bool), "advantage.norm_by_std", self.norm_by_std, "true or false")
        _check(
            not (self.mode == "dr_grpo_prefix" and self.norm_by_std),
            "advantage.norm_by_std",
            self.norm_by_std,
            "false with advantage.mode=dr_grpo_prefix (a Dr.GRPO estimator: no std; its raw-reward "
            "continuation term has no group to take a std over)",
        )


@dataclass
class GuidanceConfig:
    """Which prompts get their demo prefix, and how long (per-prompt rules after the paper).

    The equations are in :mod:`prefix_rft.core.guidance`. ``S_p`` is a prompt's running on-policy success
    rate, ``r_p`` its own prefix ratio (``adaptive``).

    Attributes:
        mode: ``schedule`` (every training prompt gets its ``num_prefixed`` hybrid rollouts, ratio from the
            global schedule: the paper), ``on_failure`` (only prompts with ``S_p <= threshold``, ratio from
            the global schedule: BREAD's rule) or ``adaptive`` (only prompts with ``S_p < target``, at their
            own ratio ``r_p``, moved toward a hybrid success of ``target``). Default ``schedule``.
        threshold: ``on_failure``: guide while ``S_p`` is at or below this. Default 0.0 (guide only prompts
            whose on-policy rollouts all failed).
        cold_start: what a prompt with no on-policy rollout scored yet gets: ``guide`` (treated as failed:
            guided, at ``init_ratio`` in ``adaptive``) or ``skip`` (treated as solved: no prefix until a
            visit says otherwise). Default ``guide``.
        success_score: a rollout counts as a success when its score is at least this. Default 1.0 (the
            math reward's correct answer).
        success_ema: weight ``beta`` of the newest visit in ``S_p``. Default 1.0 (the last visit alone).
        target: ``adaptive``: the hybrid success the controller holds, in (0, 1). Default 0.5.
        step_size: ``adaptive``: ``eta`` of ``r_p <- clip(r_p + eta (target - y), 0, max_ratio)``. Default 0.2.
        init_ratio: ``adaptive``: ``r_p`` of a prompt never seen. Default 0.5.
        max_ratio: ``adaptive``: upper bound of ``r_p``. Default 0.95 (the paper's ``high``).
        cap_by_schedule: ``adaptive``: use ``min(r_p, low_t)`` with the global schedule's ``low_t``, so the
            guidance fades as the paper's does. Default false.
    """

    mode: str = "schedule"
    threshold: float = 0.0
    cold_start: str = "guide"
    success_score: float = 1.0
    success_ema: float = 1.0
    target: float = 0.5
    step_size: float = 0.2
    init_ratio: float = 0.5
    max_ratio: float = 0.95
    cap_by_schedule: bool = False

    def validate(self, num_prefixed: int, rollout_n: int | None = None) -> None:
        """Check every ``prefix_rft.guidance.*`` value against ``num_prefixed`` and verl's ``rollout.n``
        (see :meth:`PrefixRFTConfig.validate`)."""
        _check(self.mode in GUIDANCE_MODES, "guidance.mode", self.mode, f"one of {GUIDANCE_MODES}")
        _check(
            not (self.mode != "schedule" and num_prefixed == 0),
            "guidance.mode",
            self.mode,
            "schedule with num_prefixed=0 (there is no hybrid rollout to guide; set num_prefixed >= 1)",
        )
        if rollout_n is not None:
            _check(
                self.mode == "schedule" or num_prefixed < rollout_n,
                "guidance.mode",
                self.mode,
                f"schedule when num_prefixed={num_prefixed} equals actor_rollout_ref.rollout.n={rollout_n} "
                "(a guided prompt would have no on-policy rollout to measure its success by); or lower num_prefixed",
            )
        _check(
            _is_num(self.threshold) and 0.0 <= self.threshold < 1.0,
            "guidance.threshold",
            self.threshold,
            "a float in [0, 1) (0 = guide only prompts whose on-policy rollouts all failed)",
        )
        _check(
            self.cold_start in COLD_START_RULES,
            "guidance.cold_start",
            self.cold_start,
            f"one of {COLD_START_RULES}",
        )
        _check(
            _is_num(self.success_score),
            "guidance.success_score",
            self.success_score,
            "a number (a reward score)",
        )
        _check(
            _is_num(self.success_ema) and 0.0 < self.success_ema <= 1.0,
            "guidance.success_ema",
            self.success_ema,
            "a float in (0, 1] (1 = the last visit alone)",
        )
        _check(
            _is_num(self.target) and 0.0 < self.target < 1.0,
            "guidance.target",
            self.target,
            "a float in (0, 1)",
        )
        _check(
            _is_num(self.step_size) and self.step_size > 0.0,
            "guidance.step_size",
            self.step_size,
            "a float > 0",
        )
        _check(
            _is_num(self.max_ratio) and 0.0 < self.max_ratio <= 1.0,
            "guidance.max_ratio",
            self.max_ratio,
            "a float in (0, 1]",
        )
        _check(
            _is_num(self.init_ratio) and 0.0 <= self.init_ratio <= self.max_ratio,
            "guidance.init_ratio",
            self.init_ratio,
            f"a float in [0, guidance.max_ratio={self.max_ratio}]",
        )
        _check(
            isinstance(self.cap_by_schedule, bool),
            "guidance.cap_by_schedule",
            self.cap_by_schedule,
            "true or false",
        )


@dataclass
class PrefixRFTConfig:
    """The whole ``prefix_rft:`` block.

    Attributes:
        num_prefixed: how many of the ``rollout.n`` samples of a training prompt start from a
            demonstration prefix. Default 1 (paper); 0 = plain RFT / Dr.GRPO.
        demo_key: dataset column holding the demonstration(s): a string or a list of strings.
            Default ``demonstrations``.
        seed: seed of the prefix-ratio draws and of the choice among several demos. Default 42.
        demo_fraction: fraction of training rows that keep their demonstrations (the paper's "10% of the
            demos" ablation uses 0.1): a seeded hash of each row's identity decides, the same rows every
            step; the other rows get no prefix (all ``rollout.n`` samples on-policy, ``demo_missing`` 0).
            Default 1.0 (every row).
        val_seed: seed of validation sampling. An integer gives every validation request its own
            sampling seed, a pure function of ``(val_seed, row, sample index)``, so the same checkpoint
            scores the same on every run (vLLM and SGLang honour a per-request seed). Default ``None``:
            the rollout engine's own random stream (verl's behaviour; validation then varies run to run).
        ratio: prefix-ratio schedule, see :class:`RatioScheduleConfig`.
        entropy_clip: see :class:`EntropyClipConfig`.
        loss: see :class:`PrefixLossConfig`.
        advantage: see :class:`AdvantageConfig`.
        guidance: per-prompt guidance, see :class:`GuidanceConfig`.
    """

    num_prefixed: int = 1
    demo_key: str = "demonstrations"
    seed: int = 42
    demo_fraction: float = 1.0
    val_seed: int | None = None
    ratio: RatioScheduleConfig = field(default_factory=RatioScheduleConfig)
    entropy_clip: EntropyClipConfig = field(default_factory=EntropyClipConfig)
    loss: PrefixLossConfig = field(default_factory=PrefixLossConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)

    def validate(self, rollout_n: int | None = None) -> PrefixRFTConfig:
        """Check every value's type and range; raise :class:`PrefixRFTConfigError` naming the key and the fix.

        The top-level fields here, then each sub-config's own ``validate`` (ratio, entropy_clip, loss,
        advantage, guidance), in that order. ``rollout_n`` is verl's ``actor_rollout_ref.rollout.n``.
        """
        _check(
            _is_int(self.num_prefixed) and self.num_prefixed >= 0,
            "num_prefixed",
            self.num_prefixed,
            "an integer >= 0 (0 = plain RFT)",
        )
        if rollout_n is not None:
            _check(
                self.num_prefixed <= rollout_n,
                "num_prefixed",
                self.num_prefixed,
                f"at most actor_rollout_ref.rollout.n={rollout_n}",
            )
        _check(
            isinstance(self.demo_key, str) and self.demo_key != "",
            "demo_key",
            self.demo_key,
            "a non-empty dataset column name",
        )
        _check(_is_int(self.seed), "seed", self.seed, "an integer")
        _check(
            _is_num(self.demo_fraction) and 0.0 < self.demo_fraction <= 1.0,
            "demo_fraction",
            self.demo_fraction,
            "a float in (0, 1] (1.0 = every row keeps its demos; num_prefixed=0 for none)",
        )
        _check(
            self.val_seed is None or _is_int(self.val_seed),
            "val_seed",
            self.val_seed,
            "an integer, or null for the rollout engine's own random stream",
        )
        self.ratio.validate()
        self.entropy_clip.validate()
        self.loss.validate()
        self.advantage.validate()
        self.guidance.validate(self.num_prefixed, rollout_n)
        return self


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise PrefixRFTConfigError(
            f"prefix_rft.{key}={value!r} is invalid: expected {allowed}. "
            f"Fix it in the recipe yaml or override it, e.g. prefix_rft.{key}=..."
        )


def from_dict(block: Mapping[str, Any] | None, rollout_n: int | None = None) -> PrefixRFTConfig:
    """Build and validate a :class:`PrefixRFTConfig` from a mapping (a plain dict or an OmegaConf node).

    Unknown keys are an error (a typo must not silently fall back to a default).
    """
    if block is None:
        return PrefixRFTConfig().validate(rollout_n)
    if hasattr(block, "_metadata"):  # OmegaConf DictConfig, without importing omegaconf here
        from omegaconf import OmegaConf

        block = OmegaConf.to_container(block, resolve=True)
    return _build(PrefixRFTConfig, dict(block), "").validate(rollout_n)


def _build(cls: type, data: dict[str, Any], path: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise PrefixRFTConfigError(f"unknown key prefix_rft.{path}{key}; known keys: {sorted(fields)}")
        sub = fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            if not isinstance(value, Mapping):
                raise PrefixRFTConfigError(f"prefix_rft.{path}{key} must be a mapping, got {value!r}")
            kwargs[key] = _build(sub, dict(value), f"{path}{key}.")
        else:
            kwargs[key] = value
    return cls(**kwargs)
