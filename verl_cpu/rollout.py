"""``hf_cpu``: a transformers-based CPU rollout backend for verl 0.9.1, registered on import.

verl generates only through rollout *servers*: the agent loop calls
``await server.generate.remote(request_id=..., prompt_ids=..., sampling_params=...) -> TokenOutput`` on a
Ray actor that a :class:`~verl.workers.rollout.replica.RolloutReplica` launched, and the trainer pushes
the actor's weights into the rollout through a :class:`~verl.workers.rollout.base.BaseRollout` adapter
living in each trainer worker. verl ships vLLM / SGLang / TRT-LLM implementations; this module adds a
CPU one with the same three pieces:

- :class:`HFCPUServer`: the generation server (a Ray actor in a real run). Requests that arrive within
  ``batch_wait_ms`` of each other are run as one left-padded batch with a KV cache
  (:class:`~verl_cpu.rollout_engine.HFGenerationEngine`) in a worker thread; it also takes weight
  buckets, sleep / wake_up / abort calls and the weights' ``global_steps`` version.
- :class:`HFCPUReplica`: launches one server per replica (``launch_servers``), named
  ``hf_cpu_server_{replica_rank}_0`` so the adapter can find it.
- :class:`HFCPUServerAdapter`: the ``BaseRollout`` built by verl's ``ActorRolloutRefWorker`` for
  ``rollout.name=hf_cpu``; ``update_weights`` streams the actor's ``(hf_name, tensor)`` pairs to the
  server in buckets of ``checkpoint_engine.update_weights_bucket_megabytes``.

Importing this module registers the name ``hf_cpu`` in ``verl.workers.rollout.base._ROLLOUT_REGISTRY``
(mode ``async``) and in ``RolloutReplicaRegistry``. Configure it with ``actor_rollout_ref.rollout.name=hf_cpu``
and, optionally, ``actor_rollout_ref.rollout.engine_kwargs.hf_cpu.<knob>`` (see :class:`HFCPUEngineArgs`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Generator
from dataclasses import dataclass, fields
from typing import Any, Optional

import torch

from verl_cpu.rollout_engine import (
    GenerationRequest,
    GenerationResult,
    HFGenerationEngine,
    parse_sampling_params,
)

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))

ROLLOUT_NAME = "hf_cpu"
SERVER_NAME_PREFIX = f"{ROLLOUT_NAME}_"


@dataclass(frozen=True)
class HFCPUEngineArgs:
    """Knobs under ``actor_rollout_ref.rollout.engine_kwargs.hf_cpu`` (all optional).

    Attributes:
        dtype: dtype of the rollout model (default ``float32``). ``rollout.dtype`` (bfloat16 by default,
            meant for GPUs) is ignored by hf_cpu: float32 keeps rollout log-probs comparable with the actor's.
        attn_implementation: transformers attention (default ``sdpa``).
        batch_wait_ms: how long the server waits after a request for more to batch with it (default 5).
        max_batch_size: most requests per batch (default ``rollout.max_num_seqs``).
        num_threads: ``torch.set_num_threads`` in the server process (default: leave torch's setting).
        num_cpus: Ray CPUs reserved by each server actor (default 0: it runs while the trainer idles).
    """

    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    batch_wait_ms: float = 5.0
    max_batch_size: Optional[int] = None
    num_threads: Optional[int] = None
    num_cpus: float = 0.0

    @classmethod
    def from_rollout_config(cls, config: Any) -> HFCPUEngineArgs:
        """Read ``config.engine_kwargs[hf_cpu]``; unknown knobs raise ``ValueError`` naming them."""
        engine_kwargs = _get(config, "engine_kwargs", None) or {}
        raw = dict(_get(engine_kwargs, ROLLOUT_NAME, None) or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(
                f"unknown actor_rollout_ref.rollout.engine_kwargs.{ROLLOUT_NAME} keys {unknown}; known: {sorted(known)}"
            )
        return cls(**{k: v for k, v in raw.items() if v is not None})


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """``obj.key`` / ``obj[key]`` for dataclasses, DictConfigs and dicts alike."""
    if isinstance(obj, dict):
        return obj.get(key, default)
    if hasattr(obj, "get") and not hasattr(obj, key):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """EOS ids: generation_config's eos (int or list; else the model config's), plus the tokenizer's eos."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if eos is None:
            continue
        ids.update([eos] if isinstance(eos, int) else list(eos))
        break
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def load_hf_model(model_path: str, engine_args: HFCPUEngineArgs, trust_remote_code: bool = False):
    """Load the causal LM the rollout serves (CPU, ``engine_args.dtype``, ``engine_args.attn_implementation``)."""
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, engine_args.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"engine_kwargs.{ROLLOUT_NAME}.dtype={engine_args.dtype!r} is not a torch dtype")
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        dtype=dtype,
        attn_implementation=engine_args.attn_implementation,
        trust_remote_code=trust_remote_code,
    )
    model.requires_grad_(False)
    return model.eval()


@dataclass(eq=False)
class _Pending:
    request: GenerationRequest
    future: asyncio.Future


class HFCPUServer:
    """Token-in-token-out generation server with the method surface verl calls on rollout servers.

    In a training run it is a Ray actor created by :class:`HFCPUReplica`; tests build it directly. Either
    pass a loaded ``model`` (+ ``tokenizer``) or let it load ``model_config.local_path``.

    Args:
        config: the rollout config (``RolloutConfig`` or its DictConfig).
        model_config: ``HFModelConfig`` (or DictConfig), used when ``model`` is None.
        rollout_mode: a ``RolloutMode`` (informational: weights always live in host memory).
        replica_rank: replica index; the engine seed is ``config.seed + replica_rank``.
        model / tokenizer: an already loaded model and tokenizer (tests).
    """

    def __init__(
        self,
        config: Any,
        model_config: Any = None,
        rollout_mode: Any = None,
        replica_rank: int = 0,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.config import HFModelConfig, RolloutConfig

        if not isinstance(config, RolloutConfig):
            config = omega_conf_to_dataclass(config, dataclass_type=RolloutConfig)
        self.config = config
        self.engine_args = HFCPUEngineArgs.from_rollout_config(config)
        if self.engine_args.num_threads:
            torch.set_num_threads(int(self.engine_args.num_threads))
        self.rollout_mode = rollout_mode
        self.replica_rank = replica_rank

        if model is None:
            if model_config is None:
                raise ValueError("HFCPUServer needs either model_config or a loaded model")
            if not isinstance(model_config, HFModelConfig):
                model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
            model = load_hf_model(model_config.local_path, self.engine_args, model_config.trust_remote_code)
            tokenizer = tokenizer if tokenizer is not None else model_config.tokenizer
        self.tokenizer = tokenizer
        pad_id = getattr(tokenizer, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(model.config, "pad_token_id", None)
        eos_ids = _eos_token_ids(model, tokenizer)
        if not eos_ids:
            raise ValueError("the rollout model has no eos_token_id (generation_config, config or tokenizer)")
        self.engine = HFGenerationEngine(
            model,
            eos_token_ids=eos_ids,
            pad_token_id=pad_id if pad_id is not None else min(eos_ids),
            logprobs_mode=config.logprobs_mode or "processed_logprobs",
            seed=int(config.seed) + int(replica_rank),
            vocab_size=len(tokenizer) if tokenizer is not None else None,
        )
        self.max_position_embeddings = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.max_model_len = int(config.max_model_len or self.max_position_embeddings or 1 << 30)
        if self.max_position_embeddings and self.max_model_len > self.max_position_embeddings:
            raise ValueError(
                f"rollout.max_model_len ({self.max_model_len}) exceeds the model's max_position_embeddings "
                f"({self.max_position_embeddings})"
            )
        self.max_batch_size = int(self.engine_args.max_batch_size or config.max_num_seqs or 64)
        self.global_steps: Optional[int] = None
        self.is_sleeping = False

        self._model_lock: Optional[asyncio.Lock] = None
        self._queue: Optional[asyncio.Queue] = None
        self._scheduler: Optional[asyncio.Task] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._paused = False
        self._rejecting = False
        self._resume_event: Optional[asyncio.Event] = None
        self._inflight: set[_Pending] = set()
        self._running: list[_Pending] = []
        self.num_batches = 0  # for tests / debugging: how many batches the scheduler ran

    # ----------------------------------------------------------- event-loop state
    def _ensure_loop_state(self) -> None:
        """Create the queue, lock and scheduler task on the running loop (recreated if the loop changed)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._scheduler is not None and not self._scheduler.done():
            return
        self._loop = loop
        self._queue = asyncio.Queue()
        self._model_lock = asyncio.Lock()
        self._resume_event = asyncio.Event()
        if not self._paused:
            self._resume_event.set()
        self._scheduler = loop.create_task(self._schedule())

    async def _schedule(self) -> None:
        """Collect requests for ``batch_wait_ms`` after the first one, then run them as one batch."""
        wait_s = max(0.0, float(self.engine_args.batch_wait_ms)) / 1000.0
        while True:
            batch = [await self._queue.get()]
            if wait_s:
                await asyncio.sleep(wait_s)
            while len(batch) < self.max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [p for p in batch if not p.future.done()]
            if not batch:
                continue
            try:
                async with self._model_lock:
                    self.num_batches += 1
                    self._running = batch
                    try:
                        results = await asyncio.to_thread(
                            self.engine.generate_batch, [p.request for p in batch]
                        )
                    finally:
                        self._running = []
            except Exception as exc:  # surface the error to every caller of the batch
                logger.exception("hf_cpu generation batch failed")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)

    # ------------------------------------------------------------------ generate
    def _default_max_tokens(self, prompt_len: int) -> int:
        """verl's vLLM default: ``min(response_length, prompt_length + response_length - len(prompt))``."""
        return min(
            self.config.response_length, self.config.prompt_length + self.config.response_length - prompt_len
        )

    def _token_output(self, result: GenerationResult):
        from verl.workers.rollout.replica import TokenOutput

        stop_reason = "aborted" if result.finish_reason == "abort" else "completed"
        return TokenOutput(
            token_ids=result.token_ids,
            log_probs=result.log_probs,
            stop_reason=stop_reason,
            extra_fields={"global_steps": self.global_steps, "finish_reason": result.finish_reason},
        )

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        audio_data: Optional[list[Any]] = None,
        mm_processor_kwargs: Optional[dict[str, Any]] = None,
        priority: int = 0,
        **kwargs: Any,
    ):
        """Generate a continuation of ``prompt_ids`` (token-in-token-out) -> ``TokenOutput``.

        ``TokenOutput.log_probs`` is set when ``sampling_params['logprobs']`` is truthy;
        ``stop_reason`` is ``"completed"`` (EOS / stop token / max_tokens) or ``"aborted"``;
        ``extra_fields`` carries ``global_steps`` (weight version) and the raw ``finish_reason``.
        """
        if image_data is not None or video_data is not None or audio_data is not None:
            raise NotImplementedError(
                f"request {request_id}: the hf_cpu rollout is text-only (got multimodal data)"
            )
        prompt_ids = [int(t) for t in prompt_ids]
        spec = parse_sampling_params(
            dict(sampling_params),
            default_max_tokens=self._default_max_tokens(len(prompt_ids)),
            max_possible_tokens=self.max_model_len - len(prompt_ids),
            defaults={"ignore_eos": bool(self.config.ignore_eos)},
        )
        self._ensure_loop_state()
        while self._paused:
            if self._rejecting:
                return self._token_output(GenerationResult(finish_reason="abort"))
            await self._resume_event.wait()
        request = GenerationRequest(prompt_ids=prompt_ids, spec=spec)
        if not spec.greedy:
            # draw the seed at arrival, so results do not depend on how requests get batched
            request.generator = self.engine.make_generator(spec.seed)
        pending = _Pending(request=request, future=self._loop.create_future())
        self._inflight.add(pending)
        try:
            await self._queue.put(pending)
            return self._token_output(await pending.future)
        finally:
            self._inflight.discard(pending)

    # --------------------------------------------------------------- weights
    async def begin_weight_update(self) -> None:
        """Start receiving a full set of weights (see :meth:`load_weight_bucket`)."""
        self._ensure_loop_state()
        async with self._model_lock:
            self.engine.begin_weight_update()

    async def load_weight_bucket(self, named_tensors: list[tuple[str, torch.Tensor]]) -> int:
        """Load one bucket of ``(hf_name, tensor)`` pairs; returns how many tensors were loaded."""
        self._ensure_loop_state()
        async with self._model_lock:
            return self.engine.load_weights(named_tensors)

    async def finish_weight_update(self, global_steps: Optional[int] = None) -> None:
        """Check every parameter was received and record the weights' version."""
        self._ensure_loop_state()
        async with self._model_lock:
            self.engine.finish_weight_update()
        if global_steps is not None:
            self.global_steps = global_steps

    async def set_global_steps(self, global_steps: int) -> None:
        """Set the version (trainer step) of the served weights, returned in ``extra_fields``."""
        self.global_steps = global_steps

    # ------------------------------------------------------ lifecycle (verl's API)
    async def wake_up(self, tags: Optional[list[str]] = None) -> None:
        """Weights and cache stay in host memory: only records the state."""
        self.is_sleeping = False

    async def sleep(self) -> None:
        """Nothing to free on CPU (the KV cache lives only during a batch): only records the state."""
        self.is_sleeping = True

    async def clear_kv_cache(self) -> None:
        """No cache outlives a batch: nothing to clear."""

    async def release_kv_cache(self) -> None:
        """No persistent KV cache: nothing to release."""

    async def resume_kv_cache(self) -> None:
        """No persistent KV cache: nothing to restore."""

    async def wait_for_requests_to_drain(self) -> None:
        """Return once no request is queued or running."""
        self._ensure_loop_state()
        while not self._queue.empty() or self._model_lock.locked():
            await asyncio.sleep(0.01)

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        """Abort queued and running requests (they return ``stop_reason="aborted"``) and hold new ones.

        New requests wait until :meth:`resume_generation`, or return aborted at once when
        ``reject_request`` is true.
        """
        self._ensure_loop_state()
        self._paused = True
        self._rejecting = reject_request
        self._resume_event.clear()
        running = list(self._running)
        if running:  # the batch being generated stops at its next token and returns partial outputs
            self.engine.abort_event.set()
        aborted = len(running)
        for pending in list(self._inflight):  # queued, or collected by the scheduler but not yet started
            if pending not in running and not pending.future.done():
                pending.future.set_result(GenerationResult(finish_reason="abort"))
                aborted += 1
        if running:
            while any(not p.future.done() for p in running):
                await asyncio.sleep(0.005)
        self.engine.abort_event.clear()
        return {"aborted_count": aborted, "request_ids": []}

    async def resume_generation(self) -> None:
        """Admit requests again after :meth:`abort_all_requests`."""
        self._ensure_loop_state()
        self._paused = False
        self._rejecting = False
        self._resume_event.set()

    async def start_profile(self, **kwargs: Any) -> None:
        """Profiling is not supported by hf_cpu (no-op)."""

    async def stop_profile(self) -> None:
        """Profiling is not supported by hf_cpu (no-op)."""

    def get_rollout_config(self):
        return self.config

    def ping(self) -> int:
        """Liveness check used by the replica after launching the actor."""
        return self.replica_rank


# ---------------------------------------------------------------------- verl glue
def _verl_classes():
    from verl.workers.rollout.base import BaseRollout
    from verl.workers.rollout.replica import RolloutReplica

    return BaseRollout, RolloutReplica


_BaseRollout, _RolloutReplica = _verl_classes()


def server_actor_name(replica_rank: int, node_rank: int = 0, name_suffix: str = "") -> str:
    """The Ray actor name of a replica's server (the adapter finds it with ``ray.get_actor``)."""
    return f"{SERVER_NAME_PREFIX}server_{replica_rank}_{node_rank}{name_suffix}"


class HFCPUReplica(_RolloutReplica):
    """A rollout replica served by one :class:`HFCPUServer` Ray actor (on the node of its first worker)."""

    async def launch_servers(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        engine_args = HFCPUEngineArgs.from_rollout_config(self.config)
        options: dict[str, Any] = {"max_concurrency": self.max_concurrency, "num_cpus": engine_args.num_cpus}
        if self.workers:
            node_id = await self.workers[0].__ray_call__.remote(
                lambda self: ray.get_runtime_context().get_node_id()
            )
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
        if self.is_reward_model:
            name = server_actor_name(self.replica_rank, 0, f"_reward{self.name_suffix}")
        elif self.is_teacher_model:
            name = server_actor_name(self.replica_rank, 0, f"_teacher{self.name_suffix}")
        else:
            name = server_actor_name(self.replica_rank, 0, self.name_suffix)
        options["name"] = name
        server = (
            ray.remote(HFCPUServer)
            .options(**options)
            .remote(
                config=self.config,
                model_config=self.model_config,
                rollout_mode=self.rollout_mode,
                replica_rank=self.replica_rank,
            )
        )
        await server.ping.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"{ROLLOUT_NAME}://{ray.util.get_node_ip_address()}/{name}"
        logger.info("launched %s (mode %s)", name, self.rollout_mode)

    def rollout_worker_use_gpu(self) -> bool:
        return False


class HFCPUServerAdapter(_BaseRollout):
    """The rollout object of each trainer worker for ``rollout.name=hf_cpu`` (verl's ``ServerAdapter`` role).

    Only the first rank of each replica talks to the server; every rank still consumes the weight
    generator in :meth:`update_weights` (gathering FSDP shards is collective).

    Args:
        config / model_config / device_mesh: as verl passes them to every rollout class.
        replica_rank: the replica this worker belongs to; ``-1`` = ``RANK // replica world size``.
        server_handle: the server to drive (tests); by default looked up by name in Ray.
    """

    def __init__(self, config, model_config, device_mesh=None, replica_rank: int = -1, server_handle=None):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        rollout_world_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // rollout_world_size if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % rollout_world_size
        self.is_leader_rank = self.rollout_rank == 0
        self.server_handle = server_handle

    def _server(self):
        """The replica's server handle (looked up lazily: servers start after the workers)."""
        if not self.is_leader_rank:
            return None
        if self.server_handle is None:
            import ray

            self.server_handle = ray.get_actor(server_actor_name(self.replica_rank))
        return self.server_handle

    async def resume(self, tags: list[str]) -> None:
        server = self._server()
        if self.config.free_cache_engine and server is not None:
            await server.wake_up.remote(tags=tags)

    async def release(self) -> None:
        server = self._server()
        if self.config.free_cache_engine and server is not None:
            await server.sleep.remote()

    @torch.no_grad()
    async def update_weights(
        self,
        weights: Generator[tuple[str, torch.Tensor], None, None],
        wire_format: str = "named_tensors",
        global_steps: Optional[int] = None,
        peft_config: Any = None,
        **kwargs: Any,
    ) -> None:
        """Send the actor's ``(hf_name, tensor)`` stream to the server in buckets; the server checks all arrived."""
        if wire_format != "named_tensors":
            raise NotImplementedError(
                f"the hf_cpu rollout takes wire_format='named_tensors' only, got {wire_format!r}: "
                "use rollout.checkpoint_engine.backend=naive"
            )
        if peft_config is not None:
            raise NotImplementedError(
                "the hf_cpu rollout cannot load LoRA adapters: set actor_rollout_ref.model.lora.merge=True"
            )
        server = self._server()
        bucket_bytes = max(1, int(self.config.checkpoint_engine.update_weights_bucket_megabytes)) << 20
        if server is not None:
            await server.begin_weight_update.remote()
        bucket: list[tuple[str, torch.Tensor]] = []
        size = 0
        for name, tensor in weights:
            if server is None:
                continue  # non-leader ranks only take part in the (collective) gathering
            tensor = tensor.detach()
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            bucket.append((name, tensor.to("cpu")))
            size += tensor.numel() * tensor.element_size()
            if size >= bucket_bytes:
                await server.load_weight_bucket.remote(bucket)
                bucket, size = [], 0
        if server is not None:
            if bucket:
                await server.load_weight_bucket.remote(bucket)
            await server.finish_weight_update.remote(global_steps=global_steps)

    def generate_sequences(self, prompts):
        raise NotImplementedError(
            "hf_cpu serves generation through HFCPUServer (agent loop -> LLMServerClient), not generate_sequences"
        )


def register_hf_cpu_rollout() -> None:
    """Register ``hf_cpu`` with verl's rollout registries (idempotent; runs on import)."""
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    _ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = f"{__name__}.HFCPUServerAdapter"
    RolloutReplicaRegistry.register(ROLLOUT_NAME, lambda: HFCPUReplica)


register_hf_cpu_rollout()
