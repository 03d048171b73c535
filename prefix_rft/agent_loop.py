"""The Prefix-RFT rollout: ``prefix_rft_agent``, verl's single-turn agent loop plus demo-prefix splicing.

Paper sec. 3 / A.2: of the ``rollout.n`` samples of a training prompt, the first ``num_prefixed`` start
from a prefix of a demonstration and the policy writes the rest. Everything else (chat template,
multimodal handling, truncation, metrics) is verl's :class:`SingleTurnAgentLoop`, unchanged.

How a hybrid sample is built (token in, token out; nothing is decoded and re-encoded):

1. ``prompt_ids`` = the chat-templated prompt, built by verl exactly as for any other sample.
2. The demonstration (column ``prefix_rft.demo_key``: a string, a list of strings, or a list of
   ``{"content": ...}`` messages; one is picked with :func:`~prefix_rft.core.schedule.choose_demo`)
   is tokenized ONCE per (row, demo) in this worker: ``encode(demo, add_special_tokens=False)`` followed
   by ``tokenizer.eos_token_id`` (unless it already ends with it), so ratio 1.0 includes the end token.
   If the generation prompt already opens a reasoning block (ends with ``<think>``) and the demo starts
   with the same tag, the tag (and one newline after it) is dropped from the demo so it is not doubled.
3. ``l = sample_prefix_ratio(global_steps, cfg.ratio, seed, uid=row_uid, sample_index=session_id)`` and
   :func:`~prefix_rft.core.splice.splice_prefix` give the prefix ``demo_ids[:L]`` and the remaining
   budget ``rollout.response_length - L``.
4. The server continues ``prompt_ids + prefix`` with ``max_tokens = budget - L``. When the prefix already
   ends the turn (the whole demo, its EOS included: ratio 1.0) or fills the budget (a demo longer than
   the budget), the server is not called at all.
5. ``response = prefix + generated``; ``response_mask`` is 1 on both (prefix tokens are trained on);
   ``response_logprobs`` (when ``rollout.calculate_log_probs``) holds 0.0 on prefix positions, which have
   no behaviour-policy log-prob: the trainer must neutralise rollout correction there (use
   ``prefix_mask``); ``prefix_mask`` is 1 on the ``L`` prefix tokens.

Per-sample fields (0-d tensors in TransferQueue, ``[B]`` when fetched): ``is_prefixed`` (0/1),
``prefix_ratio`` (float, -1 when no prefix), ``prefix_len`` (tokens), ``demo_missing`` (0/1: a sample
that should have had a prefix found no usable demo), ``demo_truncated`` (0/1: the prefix was cut to the
response budget, or to the server's context window so that prompt + prefix leaves room to generate). Per-token field: ``prefix_mask`` (int64, same length as ``response_mask``; TQ stores it
as a jagged tensor exactly like ``response_mask``, so ``to_padded_tensor()`` right-pads both alike).

Row identity: ``row_uid = "<extra_info.index>:<digest of the prompt messages>"`` (stable across runs
and processes; verl's ``uid`` is a fresh uuid per step and cannot be used for resume-exact draws, and
``index`` alone defaults to 0 when a dataset has no ``extra_info.index``).

``prefix_rft.demo_fraction < 1`` (the "10% of the demos" ablation): a row whose ``row_uid`` fails
:func:`~prefix_rft.core.schedule.keeps_demo` is rolled out as plain RL (no session is prefixed, its prompt
kept, ``demo_missing`` = 0); ``prefix_rft/prefixed_frac`` shows the share of prefixed rollouts.

Per-prompt guidance (``prefix_rft.guidance.mode`` ``on_failure`` / ``adaptive``): the trainer decides on the
driver, per training row, whether its hybrid sessions get a prefix and at which ratio, and sends the decision
with the row (:data:`GUIDED_FIELD`, :data:`GUIDE_RATIO_FIELD`; :func:`guidance_of`). An unguided row is rolled
out as plain RL (``demo_missing`` = 0); a guided row without a ratio draws it from the schedule.

Validation. verl 0.9.1 pops ``validate`` from the batch before the agent loop runs, and the loop gets
the same kwargs for train and validation. A request is treated as validation (never prefixed,
``demo_missing`` = 0) when it carries a truthy ``validate`` kwarg (honoured if a verl version passes it)
or its ``extra_info.split`` is one of :data:`VALIDATION_SPLITS`. Otherwise the data contract applies:
validation rows carry no demos, so they get no prefix (``demo_missing`` = 1 on the designated sessions,
a metric, not an error). With ``prefix_rft.val_seed`` set, each validation request carries its own sampling
``seed`` (:func:`with_validation_seed`), so a checkpoint's validation score is the same on every run.

Only verl's v1 trainer (``trainer.use_v1=True``, the 0.9.1 default) carries ``session_id`` and the
extra output fields to the actor; with the legacy trainer the loop refuses to start.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import model_validator
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop
from verl.workers.rollout.replica import TokenOutput

from prefix_rft.config import PrefixRFTConfig
from prefix_rft.core.schedule import choose_demo, keeps_demo, sample_prefix_ratio, stable_seed
from prefix_rft.core.splice import splice_prefix
from prefix_rft.verl_config import AGENT_LOOP_NAME, VALIDATION_SPLITS, context_window, prefix_config_from_verl

REASONING_OPEN_TAGS = ("<think>",)
"""Opening tags a chat template may already put at the end of the generation prompt."""

PER_SAMPLE_INT_FIELDS = ("is_prefixed", "prefix_len", "demo_missing", "demo_truncated")

GUIDED_FIELD = "prefix_rft_guided"
"""Per-row input written by the trainer when ``prefix_rft.guidance.mode`` is not ``schedule``: 1 if the row's
``num_prefixed`` sessions start from a demo prefix this step, 0 if every session is on-policy."""
GUIDE_RATIO_FIELD = "prefix_rft_ratio"
"""Per-row input next to :data:`GUIDED_FIELD`: the prefix ratio of the row's hybrid sessions, or a negative
value for a draw from the global schedule (the paper's sampler)."""


class PrefixRFTAgentLoopOutput(AgentLoopOutput):
    """verl's :class:`AgentLoopOutput` plus the Prefix-RFT fields (see the module docstring)."""

    prefix_mask: list[int]
    """1 on demo-prefix tokens, 0 on generated ones; same length as ``response_mask``."""
    is_prefixed: int = 0
    prefix_ratio: float = -1.0
    prefix_len: int = 0
    demo_missing: int = 0
    demo_truncated: int = 0

    @model_validator(mode="after")
    def _check_alignment(self) -> PrefixRFTAgentLoopOutput:
        if len(self.prefix_mask) != len(self.response_mask):
            raise ValueError(
                f"prefix_mask has {len(self.prefix_mask)} entries but response_mask has "
                f"{len(self.response_mask)}; they must be aligned token by token"
            )
        if sum(self.prefix_mask) != self.prefix_len:
            raise ValueError(f"prefix_mask sums to {sum(self.prefix_mask)} but prefix_len={self.prefix_len}")
        return self

    def as_dict(self) -> dict[str, Any]:
        """verl's dict for TransferQueue, with our fields as tensors (per-token int64, per-sample 0-d)."""
        output = super().as_dict()
        output["prefix_mask"] = torch.tensor(self.prefix_mask, dtype=torch.int64)
        for name in PER_SAMPLE_INT_FIELDS:
            output[name] = torch.tensor(int(getattr(self, name)), dtype=torch.int64)
        output["prefix_ratio"] = torch.tensor(float(self.prefix_ratio), dtype=torch.float32)
        return output


class DemoTokenCache:
    """Per-process cache of tokenized demonstrations, holding only the current step's rows.

    What a step reuses is the ``num_prefixed`` sessions of one row, which run concurrently in one worker:
    they share one in-flight encode and its result. A row comes back only after an epoch, usually to
    another worker, so entries of earlier steps are dropped when a later step's first request arrives:
    the cache holds at most the rows this worker serves in one step (``max_entries`` is a backstop).
    ``encodes`` counts real encodes.
    """

    def __init__(self, max_entries: int = 1024):
        self.max_entries = max_entries
        self._done: OrderedDict[tuple, list[int]] = OrderedDict()
        self._inflight: dict[tuple, asyncio.Future] = {}
        self.step: int | None = None
        self.encodes = 0

    def __len__(self) -> int:
        return len(self._done)

    async def get(self, key: tuple, encode, step: int | None = None) -> list[int]:
        """Ids for ``key``, running the blocking ``encode()`` in an executor on a miss.

        ``step`` is the request's global step: a step later than the cache's drops every entry.
        """
        if step is not None and (self.step is None or step > self.step):
            self._done.clear()
            self.step = step
        if key in self._done:
            self._done.move_to_end(key)
            return self._done[key]
        if key in self._inflight:
            return await self._inflight[key]
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, encode)
        self._inflight[key] = future
        self.encodes += 1
        try:
            ids = await future
        finally:
            self._inflight.pop(key, None)
        self._done[key] = ids
        while len(self._done) > self.max_entries:
            self._done.popitem(last=False)
        return ids

    def clear(self) -> None:
        """Drop every entry (tests)."""
        self._done.clear()
        self._inflight.clear()
        self.step = None
        self.encodes = 0


DEMO_CACHE = DemoTokenCache()
_CONFIG_CACHE: dict[int, tuple[Any, PrefixRFTConfig]] = {}


def load_prefix_rft_config(trainer_config: Any) -> PrefixRFTConfig:
    """The validated ``prefix_rft:`` block of the whole trainer config (parsed once per config object)."""
    hit = _CONFIG_CACHE.get(id(trainer_config))
    if hit is not None and hit[0] is trainer_config:
        return hit[1]
    cfg = prefix_config_from_verl(trainer_config)
    _CONFIG_CACHE[id(trainer_config)] = (trainer_config, cfg)
    return cfg


def _plain(value: Any) -> Any:
    """numpy / tensor / NonTensorData scalars and arrays -> plain Python."""
    if hasattr(value, "data") and type(value).__name__ in ("NonTensorData", "NonTensorStack"):
        value = value.data
    if isinstance(value, torch.Tensor):
        return value.item() if value.dim() == 0 else value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def row_uid(kwargs: Mapping[str, Any]) -> str:
    """Stable identity of a dataset row: ``"<extra_info.index>:<blake2b of the prompt messages>"``."""
    index = _plain(kwargs.get("index", None))
    if index is None:
        index = _plain((kwargs.get("extra_info") or {}).get("index", "na"))
    prompt = json.dumps(_plain(kwargs.get("raw_prompt")), sort_keys=True, default=str)
    digest = hashlib.blake2b(prompt.encode(), digest_size=8).hexdigest()
    return f"{index}:{digest}"


def extract_demos(value: Any) -> list[str]:
    """The non-empty demonstration texts of a row's demo column (``[]`` when there are none).

    Accepts a string, a list/array of strings, or a list of chat messages ``{"content": ...}``. Any other
    value (a number, bytes, a mapping without a string ``content``...) is unusable: it yields ``[]`` (the
    sample is counted in ``demo_missing``), never an exception inside the rollout.
    """
    value = _plain(value)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return []
    demos = []
    for item in value:
        item = _plain(item)
        if isinstance(item, Mapping):
            item = item.get("content")
        if isinstance(item, str) and item.strip():
            demos.append(item)
    return demos


def guidance_of(kwargs: Mapping[str, Any]) -> tuple[bool, float | None]:
    """``(guided, ratio)`` the trainer decided for this row (:data:`GUIDED_FIELD`, :data:`GUIDE_RATIO_FIELD`).

    A request without them (``guidance.mode=schedule``, validation) is guided with a schedule draw."""
    guided = _plain(kwargs.get(GUIDED_FIELD))
    if guided is None:
        return True, None
    ratio = _plain(kwargs.get(GUIDE_RATIO_FIELD))
    return bool(guided), (float(ratio) if ratio is not None and float(ratio) >= 0.0 else None)


def is_validation_request(kwargs: Mapping[str, Any]) -> bool:
    """True for a validation request (see the module docstring for the rule)."""
    if bool(_plain(kwargs.get("validate", False))):
        return True
    extra_info = _plain(kwargs.get("extra_info")) or {}
    split = extra_info.get("split") if isinstance(extra_info, Mapping) else None
    return isinstance(split, str) and split.lower() in VALIDATION_SPLITS


def with_validation_seed(
    sampling_params: dict[str, Any], kwargs: Mapping[str, Any], val_seed: int | None
) -> dict[str, Any]:
    """``sampling_params`` with a per-request ``seed`` for a validation request when ``val_seed`` is set.

    The seed is a pure function of ``(val_seed, row_uid, session_id)`` (31 bits, what every engine takes),
    so a checkpoint's validation score does not depend on the run, the step or how requests are batched.
    Training requests, an unset ``val_seed`` and a seed the caller already chose are left alone.
    """
    if val_seed is None or "seed" in sampling_params or not is_validation_request(kwargs):
        return sampling_params
    session = int(_plain(kwargs.get("session_id", 0)) or 0)
    seed = stable_seed("validation", val_seed, row_uid(kwargs), session) % 2**31
    return {**sampling_params, "seed": seed}


def strip_reasoning_open_tag(prompt_tail: str, demo: str) -> str:
    """Drop the demo's leading reasoning tag when the generation prompt already opened it.

    ``prompt_tail`` is the decoded end of the prompt. ``"<think>\\nabc"`` -> ``"abc"`` when the prompt ends
    with ``<think>`` (optionally followed by whitespace); otherwise the demo is returned unchanged.
    """
    tail = prompt_tail.rstrip()
    for tag in REASONING_OPEN_TAGS:
        if tail.endswith(tag) and demo.lstrip().startswith(tag):
            rest = demo.lstrip()[len(tag) :]
            return rest[1:] if rest.startswith("\n") else rest
    return demo


@dataclass
class PrefixPlan:
    """What one session decided before generation, filled in by the splicing client."""

    demo_text: str | None
    demo_index: int
    ratio: float
    cache_key: tuple
    prefix_ids: list[int] | None = None
    truncated: bool = False


class _SplicingClient:
    """Wraps the server manager for one hybrid session: continue ``prompt + prefix`` within the budget.

    verl's :class:`SingleTurnAgentLoop` calls ``generate`` once with the chat-templated prompt; we
    return ``prefix + generated`` as the sampled tokens (log-prob 0.0 on the prefix), so verl's own
    bookkeeping (merge, truncation, metrics) applies unchanged to the hybrid response.
    """

    def __init__(self, inner: Any, loop: PrefixRFTAgentLoop, plan: PrefixPlan, global_steps: int):
        self.inner, self.agent, self.plan, self.global_steps = inner, loop, plan, global_steps

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs: Any
    ) -> TokenOutput:
        plan, agent = self.plan, self.agent
        demo_ids = await agent.demo_ids(plan, prompt_ids, step=self.global_steps)
        room = None if agent.context_window is None else agent.context_window - len(prompt_ids)
        splice = splice_prefix(
            demo_ids,
            plan.ratio,
            agent.response_length,
            min_prefix_tokens=agent.prefix_cfg.ratio.min_prefix_tokens,
            context_room=room,
        )
        plan.prefix_ids, plan.truncated = splice.prefix_ids, splice.truncated
        prefix = splice.prefix_ids
        want_logprobs = bool(sampling_params.get("logprobs"))
        ends_turn = bool(prefix) and prefix[-1] == agent.tokenizer.eos_token_id
        if splice.continuation_budget == 0 or ends_turn:
            # Whole demo (its end token included) or a demo that fills the budget: nothing left to write.
            version = self.global_steps - 1  # weights version a sync rollout at this step uses
            return TokenOutput(
                token_ids=list(prefix),
                log_probs=[0.0] * len(prefix) if want_logprobs else None,
                extra_fields={"min_global_steps": version, "max_global_steps": version},
            )
        params = dict(sampling_params)
        limit = params.get("max_tokens", params.get("max_new_tokens"))
        params.pop("max_new_tokens", None)
        params["max_tokens"] = (
            splice.continuation_budget if limit is None else min(limit, splice.continuation_budget)
        )
        output: TokenOutput = await self.inner.generate(
            request_id, prompt_ids=list(prompt_ids) + list(prefix), sampling_params=params, **kwargs
        )
        log_probs = continuation_log_probs(want_logprobs, len(prefix), output, request_id)
        return output.model_copy(
            update={"token_ids": list(prefix) + list(output.token_ids), "log_probs": log_probs}
        )


def continuation_log_probs(
    want_logprobs: bool, prefix_len: int, output: TokenOutput, request_id: str
) -> list[float] | None:
    """Log-probs of ``prefix + continuation``: decided by ``want_logprobs`` alone, never by the server's list.

    With log-probs requested every hybrid sample carries them (0.0 on the prefix), even when the
    continuation is empty (``[]`` from a clamped ``max_tokens``); a server list whose length differs from
    its tokens (SGLang's ``[]`` on a log-prob length mismatch) is an error, since a sample silently without
    ``rollout_log_probs`` next to siblings with them breaks verl's batch. Without the request: None.
    """
    if not want_logprobs:
        return None
    tokens, server = list(output.token_ids), list(output.log_probs or [])
    if len(server) != len(tokens):
        raise RuntimeError(
            f"request {request_id}: the rollout server returned {len(tokens)} tokens but {len(server)} "
            "log-probs with sampling_params.logprobs set; rollout_log_probs must cover every token. "
            "Fix the server (SGLang returns [] on a log-prob length mismatch), or set "
            "actor_rollout_ref.rollout.calculate_log_probs=false"
        )
    return [0.0] * prefix_len + server


@register(AGENT_LOOP_NAME)
class PrefixRFTAgentLoop(SingleTurnAgentLoop):
    """Single-turn rollout where the first ``prefix_rft.num_prefixed`` sessions start from a demo prefix."""

    demo_cache: DemoTokenCache = DEMO_CACHE

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not bool(self.config.get("trainer", {}).get("use_v1", True)):
            raise ValueError(
                "prefix_rft_agent needs verl's v1 trainer (trainer.use_v1=True): the legacy "
                "trainer drops prefix_mask and session_id. Set trainer.use_v1=True."
            )
        self.prefix_cfg = load_prefix_rft_config(self.config)
        # Tokens prompt + response may span on the server (None: unknown, then no cap).
        self.context_window, _ = context_window(self.config)

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> PrefixRFTAgentLoopOutput:
        """verl's single-turn rollout; sessions ``< num_prefixed`` of a training row splice a demo prefix."""
        cfg = self.prefix_cfg
        session_id = kwargs.get("session_id")
        guided, guide_ratio = guidance_of(kwargs)  # the trainer's per-prompt guidance (not schedule mode)
        wants_prefix = (
            not is_validation_request(kwargs)
            and guided
            and session_id is not None
            and int(_plain(session_id)) < cfg.num_prefixed
            and keeps_demo(row_uid(kwargs), seed=cfg.seed, fraction=cfg.demo_fraction)  # demo_fraction
        )
        sampling_params = with_validation_seed(sampling_params, kwargs, cfg.val_seed)
        plan = self._plan(kwargs, guide_ratio) if wants_prefix else None
        if plan is None or plan.demo_text is None:
            output = await super().run(sampling_params, **kwargs)
            return self._wrap(output, prefix_len=0, ratio=-1.0, demo_missing=int(wants_prefix), truncated=0)

        real_server = self.server_manager
        self.server_manager = _SplicingClient(
            real_server, self, plan, int(_plain(kwargs.get("global_steps", 0)))
        )
        try:
            output = await super().run(sampling_params, **kwargs)
        finally:
            self.server_manager = real_server
        prefix = plan.prefix_ids or []
        if list(output.response_ids[: len(prefix)]) != list(prefix):
            raise RuntimeError(
                f"row {row_uid(kwargs)}: the response does not start with the spliced demo prefix; "
                "a Continuous Token builder edited the assistant tokens (unsupported model family)"
            )
        # A usable demo can still give L = 0 (min_prefix_tokens=0 and a tiny ratio): no prefix, not missing.
        return self._wrap(
            output,
            prefix_len=len(prefix),
            ratio=plan.ratio if prefix else -1.0,
            demo_missing=0,
            truncated=int(plan.truncated),
        )

    def _plan(self, kwargs: Mapping[str, Any], ratio: float | None = None) -> PrefixPlan:
        """Pick the demo and draw the prefix ratio of one hybrid session (deterministic).

        ``ratio`` is the trainer's per-prompt ratio (``guidance.mode=adaptive``); ``None`` draws it from the
        global schedule."""
        cfg = self.prefix_cfg
        uid = row_uid(kwargs)
        step = int(_plain(kwargs.get("global_steps", 0)))
        session = int(_plain(kwargs["session_id"]))
        demos = extract_demos(kwargs.get(cfg.demo_key))
        if not demos:
            return PrefixPlan(demo_text=None, demo_index=-1, ratio=-1.0, cache_key=())
        idx = choose_demo(len(demos), seed=cfg.seed, uid=uid, step=step, sample_index=session)
        if ratio is None:
            ratio = sample_prefix_ratio(step, cfg.ratio, seed=cfg.seed, uid=uid, sample_index=session)
        return PrefixPlan(demo_text=demos[idx], demo_index=idx, ratio=ratio, cache_key=(uid, idx))

    async def demo_ids(
        self, plan: PrefixPlan, prompt_ids: Sequence[int], step: int | None = None
    ) -> list[int]:
        """Token ids of the planned demo (cached): text ids + eos, reasoning tag de-duplicated."""
        tail = self.tokenizer.decode(list(prompt_ids[-8:]), skip_special_tokens=False)
        text = strip_reasoning_open_tag(tail, plan.demo_text)
        eos = self.tokenizer.eos_token_id

        def encode() -> list[int]:
            ids = list(self.tokenizer.encode(text, add_special_tokens=False))
            if eos is not None and (not ids or ids[-1] != eos):
                ids.append(eos)
            return ids

        return await self.demo_cache.get((*plan.cache_key, text != plan.demo_text), encode, step=step)

    @staticmethod
    def _wrap(
        output: AgentLoopOutput, *, prefix_len: int, ratio: float, demo_missing: int, truncated: int
    ) -> PrefixRFTAgentLoopOutput:
        fields = {name: getattr(output, name) for name in output.model_fields_set}
        return PrefixRFTAgentLoopOutput(
            **fields,
            prefix_mask=[1] * prefix_len + [0] * (len(output.response_mask) - prefix_len),
            is_prefixed=int(prefix_len > 0),
            prefix_ratio=ratio,
            prefix_len=prefix_len,
            demo_missing=demo_missing,
            demo_truncated=truncated,
        )
