"""A small transformers generation engine for the ``hf_cpu`` rollout (no verl import).

The verl glue (server, replica, weight-sync adapter) lives in :mod:`verl_cpu.rollout`; this module
is the part that does the actual work and is tested on its own:

- :func:`parse_sampling_params` turns the ``sampling_params`` dict that verl's agent loops send (the
  vLLM keys: ``temperature``, ``top_p``, ``top_k``, ``max_tokens``, ``logprobs``, ``stop_token_ids``,
  ``ignore_eos``, ``seed``, ...) into a :class:`SamplingSpec`, refusing keys it cannot honour.
- :func:`apply_top_k_top_p` / :func:`process_logits` reproduce vLLM's sampler semantics: temperature
  scaling, then top-k (ties kept), then top-p (smallest set with cumulative probability >= p, at least one
  token kept); ``temperature == 0`` is greedy.
- :class:`HFGenerationEngine` runs one static batch of requests: left-padded prefill with a KV cache
  (``DynamicCache``), then token-by-token decoding; finished rows are dropped from the batch and cache.
  It returns token ids, per-token log-probs and a finish reason, and loads new weights by name.

Log-probs follow vLLM's ``logprobs_mode``: ``processed_logprobs`` (verl's default) is the log-softmax of
the distribution actually sampled from (logits / temperature, then top-k / top-p masking); for greedy
requests it is the raw log-softmax, as in vLLM. ``raw_logprobs`` is always the raw model log-softmax.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

logger = logging.getLogger(__name__)

# vLLM treats temperatures below this as greedy.
SAMPLING_EPS = 1e-5
LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")

# Keys accepted only at their neutral value (vLLM supports them; this backend does not implement them).
_NEUTRAL_KEYS: dict[str, tuple[Any, ...]] = {
    "repetition_penalty": (1.0, None),
    "presence_penalty": (0.0, None),
    "frequency_penalty": (0.0, None),
    "min_p": (0.0, None),
    "min_tokens": (0, None),
    "n": (1, None),
    "prompt_logprobs": (None,),
    "stop": (None, (), []),
    "bad_words": (None, (), []),
    "logit_bias": (None, {}),
}
# Keys that only affect detokenisation / text output, which this token-in-token-out backend never does.
_IGNORED_KEYS = {
    "detokenize",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "include_stop_str_in_output",
}


@dataclass(frozen=True)
class SamplingSpec:
    """Sampling parameters of one request, validated.

    Attributes:
        max_tokens: most new tokens to generate (>= 1).
        temperature: 0 (or below 1e-5) = greedy; otherwise logits are divided by it.
        top_p: nucleus threshold in (0, 1]; 1 disables.
        top_k: keep the k most likely tokens; -1 or 0 disables.
        logprobs: return the log-prob of each generated token.
        stop_token_ids: extra token ids that end the generation (the stop token is included in the output).
        ignore_eos: do not stop at the model's EOS token ids.
        seed: per-request sampling seed; ``None`` = drawn from the engine's seeded generator.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    logprobs: bool = False
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: Optional[int] = None

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS


def parse_sampling_params(
    params: dict[str, Any],
    *,
    default_max_tokens: int,
    max_possible_tokens: int,
    defaults: Optional[dict[str, Any]] = None,
) -> SamplingSpec:
    """Validate verl's (vLLM-style) ``sampling_params`` dict into a :class:`SamplingSpec`.

    ``max_tokens`` (or sglang's ``max_new_tokens``) defaults to ``default_max_tokens`` and is clamped to
    ``[1, max_possible_tokens]`` as verl's vLLM server does. ``defaults`` fills keys the request omits
    (e.g. the rollout config's ``ignore_eos``). Unknown keys, or supported-by-vLLM keys at a non-neutral
    value (``repetition_penalty != 1``, string ``stop``, ``n > 1``, ...), raise ``ValueError``.
    """
    if max_possible_tokens < 1:
        raise ValueError(
            f"the prompt leaves no room to generate: max_possible_tokens={max_possible_tokens}; "
            "shorten the prompt or raise actor_rollout_ref.rollout.max_model_len"
        )
    params = {**(defaults or {}), **params}
    if "max_tokens" in params:
        max_tokens = params.pop("max_tokens")
        params.pop("max_new_tokens", None)
    elif "max_new_tokens" in params:
        max_tokens = params.pop("max_new_tokens")
    else:
        max_tokens = default_max_tokens
    max_tokens = max(1, min(int(max_tokens), max_possible_tokens))

    temperature = float(params.pop("temperature", 1.0))
    top_p = float(params.pop("top_p", 1.0))
    top_k = params.pop("top_k", -1)
    top_k = -1 if top_k is None else int(top_k)
    if temperature < 0:
        raise ValueError(f"sampling_params['temperature'] must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"sampling_params['top_p'] must be in (0, 1], got {top_p}")
    if top_k < -1:
        raise ValueError(f"sampling_params['top_k'] must be -1 (disabled), 0 (disabled) or >= 1, got {top_k}")
    logprobs = bool(params.pop("logprobs", False))
    stop_token_ids = tuple(int(t) for t in (params.pop("stop_token_ids", None) or ()))
    ignore_eos = bool(params.pop("ignore_eos", False))
    seed = params.pop("seed", None)
    seed = None if seed is None else int(seed)

    for key, neutral in _NEUTRAL_KEYS.items():
        if key in params:
            value = params.pop(key)
            if value not in neutral:
                raise ValueError(
                    f"sampling_params[{key!r}]={value!r} is not supported by the hf_cpu rollout "
                    f"(only {neutral[0]!r}); drop it or use rollout.name=vllm"
                )
    for key in _IGNORED_KEYS:
        params.pop(key, None)
    if params:
        raise ValueError(
            f"unknown sampling_params keys for the hf_cpu rollout: {sorted(params)}; supported: max_tokens, "
            "max_new_tokens, temperature, top_p, top_k, logprobs, stop_token_ids, ignore_eos, seed"
        )
    return SamplingSpec(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        logprobs=logprobs,
        stop_token_ids=stop_token_ids,
        ignore_eos=ignore_eos,
        seed=seed,
    )


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask logits [B, V] outside each row's top-k / top-p set with ``-inf`` (vLLM's semantics).

    ``top_k[b] <= 0`` or ``>= V`` disables top-k for row b; ties with the k-th logit are kept.
    ``top_p[b] == 1`` disables top-p; otherwise the smallest set of most likely tokens whose probability
    mass reaches ``top_p[b]`` is kept (always at least the most likely token).
    """
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=False)
    k = torch.where((top_k <= 0) | (top_k >= vocab), torch.full_like(top_k, vocab), top_k)
    kth_value = sorted_logits.gather(1, (vocab - k).long().unsqueeze(1))
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth_value, float("-inf"))
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1.0 - top_p).unsqueeze(1)
    drop[:, -1] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def process_logits(logits: torch.Tensor, specs: list[SamplingSpec]) -> torch.Tensor:
    """The (unnormalised) sampling logits of each row: ``logits / T`` then top-k / top-p masking.

    Greedy rows are returned unchanged (raw logits).
    """
    logits = logits.float()
    temperature = torch.tensor([1.0 if s.greedy else s.temperature for s in specs], dtype=logits.dtype)
    top_k = torch.tensor([-1 if s.greedy else s.top_k for s in specs], dtype=torch.long)
    top_p = torch.tensor([1.0 if s.greedy else s.top_p for s in specs], dtype=logits.dtype)
    scaled = logits / temperature.unsqueeze(1)
    if bool(((top_k > 0) & (top_k < logits.shape[-1])).any() or (top_p < 1.0).any()):
        scaled = apply_top_k_top_p(scaled, top_k, top_p)
    return scaled


@dataclass
class GenerationRequest:
    """One request of a batch: prompt ids, its sampling spec, and its random generator."""

    prompt_ids: list[int]
    spec: SamplingSpec
    generator: Optional[torch.Generator] = None


@dataclass
class GenerationResult:
    """Output of one request.

    ``finish_reason`` is ``"stop"`` (EOS or a stop token, included in ``token_ids``), ``"length"``
    (``max_tokens`` reached) or ``"abort"`` (cancelled; ``token_ids`` holds what was generated so far).
    """

    token_ids: list[int] = field(default_factory=list)
    log_probs: Optional[list[float]] = None
    finish_reason: str = "length"


class HFGenerationEngine:
    """Batched generation with a transformers causal LM on CPU.

    Args:
        model: a ``PreTrainedModel`` causal LM (moved to eval mode; gradients never needed).
        eos_token_ids: token ids that end a generation unless a request sets ``ignore_eos``.
        pad_token_id: id used for left padding (any valid id: padded positions are masked out).
        logprobs_mode: ``processed_logprobs`` (default, vLLM/verl default) or ``raw_logprobs``.
        seed: seeds the generator that draws per-request seeds for requests without a ``seed``.
        vocab_size: token ids ``>= vocab_size`` are never produced (their logits are set to ``-inf``), as
            verl's vLLM server bans the padded tail of the embedding matrix beyond ``len(tokenizer)``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        eos_token_ids: Iterable[int],
        pad_token_id: int,
        logprobs_mode: str = "processed_logprobs",
        seed: int = 0,
        vocab_size: Optional[int] = None,
    ) -> None:
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(
                f"rollout.logprobs_mode={logprobs_mode!r} is not supported by the hf_cpu rollout; "
                f"use one of {LOGPROBS_MODES}"
            )
        self.model = model.eval()
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.pad_token_id = int(pad_token_id)
        self.logprobs_mode = logprobs_mode
        self._seed_rng = torch.Generator().manual_seed(int(seed))
        self.vocab_size = vocab_size
        self.abort_event = threading.Event()
        self._weight_update_seen: Optional[set[int]] = None

    # ------------------------------------------------------------------ sampling
    def make_generator(self, seed: Optional[int]) -> torch.Generator:
        """A generator for one request: seeded by the request's seed, else by the engine's seed stream."""
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self._seed_rng).item())
        return torch.Generator().manual_seed(seed)

    def sample(
        self, logits: torch.Tensor, requests: list[GenerationRequest]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next token [B] and its log-prob [B] (per ``logprobs_mode``) from last-position logits [B, V]."""
        specs = [r.spec for r in requests]
        logits = logits.float()
        if self.vocab_size is not None and self.vocab_size < logits.shape[-1]:
            logits = logits.clone()
            logits[:, self.vocab_size :] = float("-inf")
        raw_logprobs = torch.log_softmax(logits, dim=-1)
        processed = process_logits(logits, specs)
        tokens = torch.empty(len(requests), dtype=torch.long)
        probs = processed.softmax(dim=-1)
        for i, req in enumerate(requests):
            if req.spec.greedy:
                tokens[i] = logits[i].argmax()
            else:
                tokens[i] = torch.multinomial(probs[i], 1, generator=req.generator)[0]
        if self.logprobs_mode == "raw_logprobs":
            source = raw_logprobs
        else:
            greedy = torch.tensor([s.greedy for s in specs]).unsqueeze(1)
            source = torch.where(greedy, raw_logprobs, torch.log_softmax(processed, dim=-1))
        return tokens, source.gather(1, tokens.unsqueeze(1)).squeeze(1)

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Generate for all ``requests`` as one left-padded batch; returns results in request order.

        Setting :attr:`abort_event` stops the batch at the next token; unfinished rows then end with
        ``finish_reason="abort"``.
        """
        from transformers import DynamicCache

        if not requests:
            return []
        for i, req in enumerate(requests):
            if not req.prompt_ids:
                raise ValueError(f"request {i} of the batch has an empty prompt_ids")
            if req.generator is None and not req.spec.greedy:
                req.generator = self.make_generator(req.spec.seed)
        batch = len(requests)
        results = [GenerationResult(log_probs=[] if r.spec.logprobs else None) for r in requests]
        stop_ids = [
            set(r.spec.stop_token_ids) | (set() if r.spec.ignore_eos else set(self.eos_token_ids))
            for r in requests
        ]

        width = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        for i, req in enumerate(requests):
            input_ids[i, width - len(req.prompt_ids) :] = torch.tensor(req.prompt_ids, dtype=torch.long)
            attention_mask[i, width - len(req.prompt_ids) :] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)

        cache = DynamicCache(config=self.model.config)
        active = list(range(batch))  # request index of each row still in the batch
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :]
        positions = position_ids[:, -1:]
        while active:
            if self.abort_event.is_set():
                for idx in active:
                    results[idx].finish_reason = "abort"
                break
            tokens, logprobs = self.sample(logits, [requests[idx] for idx in active])
            keep_rows = []
            for row, idx in enumerate(active):
                token = int(tokens[row])
                results[idx].token_ids.append(token)
                if results[idx].log_probs is not None:
                    results[idx].log_probs.append(float(logprobs[row]))
                if token in stop_ids[idx]:
                    results[idx].finish_reason = "stop"
                elif len(results[idx].token_ids) >= requests[idx].spec.max_tokens:
                    results[idx].finish_reason = "length"
                else:
                    keep_rows.append(row)
            if not keep_rows:
                break
            if len(keep_rows) < len(active):
                rows = torch.tensor(keep_rows, dtype=torch.long)
                cache.batch_select_indices(rows)
                attention_mask = attention_mask[rows]
                positions = positions[rows]
                tokens = tokens[rows]
                active = [active[row] for row in keep_rows]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
            positions = positions + 1
            out = self.model(
                input_ids=tokens.unsqueeze(1),
                attention_mask=attention_mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1, :]
        return results

    # ------------------------------------------------------------------- weights
    def named_tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter and persistent buffer by its Hugging Face name (tied weights under each name)."""
        return dict(self.model.state_dict(keep_vars=True))

    def begin_weight_update(self) -> None:
        """Start a weight update: :meth:`finish_weight_update` checks every parameter was loaded since."""
        self._weight_update_seen = set()

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy ``(hf_name, tensor)`` pairs into the model (cast to its dtype); returns how many were loaded.

        Raises ``KeyError`` for a name the model does not have and ``ValueError`` for a shape mismatch.
        """
        targets = self.named_tensors()
        count = 0
        for name, tensor in named_tensors:
            target = targets.get(name)
            if target is None:
                sample = sorted(targets)[:5]
                raise KeyError(
                    f"weight {name!r} from the trainer has no counterpart in the hf_cpu rollout model "
                    f"(model names look like {sample}); the actor and rollout must load the same model"
                )
            if tuple(target.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"weight {name!r}: trainer sent shape {tuple(tensor.shape)}, rollout model has "
                    f"{tuple(target.shape)}"
                )
            target.data.copy_(tensor.detach().to(device=target.device, dtype=target.dtype))
            if self._weight_update_seen is not None:
                self._weight_update_seen.add(target.data_ptr())
            count += 1
        return count

    def finish_weight_update(self) -> None:
        """End a weight update; raises ``RuntimeError`` naming parameters that were not loaded."""
        seen, self._weight_update_seen = self._weight_update_seen, None
        if seen is None:
            raise RuntimeError("finish_weight_update() called without begin_weight_update()")
        missing = [name for name, p in self.model.named_parameters() if p.data_ptr() not in seen]
        if missing:
            raise RuntimeError(
                f"weight update left {len(missing)} rollout parameters stale, e.g. {missing[:5]}: the trainer "
                "must send every parameter (LoRA adapters without merge are not supported by hf_cpu)"
            )
