"""verl_cpu: run verl 0.9.1's own (v1) trainer on a CPU-only machine.

A CPU backend for verl, independent of any recipe (it imports only verl, torch and transformers): the ``cpu``
platform (:mod:`verl_cpu.platform`), the CPU workarounds (:mod:`verl_cpu.patches`), a transformers rollout
server ``hf_cpu`` (:mod:`verl_cpu.rollout`, :mod:`verl_cpu.rollout_engine`), a worker extension for the
community vLLM CPU build (:mod:`verl_cpu.vllm_worker`), and the environment + hydra overrides a launcher adds
(:mod:`verl_cpu.overrides`).

Switched on by the environment only: ``VERL_PLATFORM=cpu`` plus
``VERL_USE_EXTERNAL_MODULES=verl_cpu.plugin``, so that verl imports :mod:`verl_cpu.plugin` during
``import verl`` in every process (``actor_rollout_ref.model.external_lib`` alone is too late for the driver:
``verl.trainer.main_ppo`` resolves the platform at import time). :func:`verl_cpu.overrides.cpu_env` sets both;
see docs/CPU.md.
"""

from __future__ import annotations

_ENABLED = False


def enable_cpu_backend() -> None:
    """Register the CPU pieces with verl's registries and apply the CPU workarounds (idempotent)."""
    global _ENABLED
    if _ENABLED:
        return
    from verl_cpu.patches import apply_cpu_patches

    apply_cpu_patches()
    register_cpu_engines()
    register_cpu_rollout()
    _ENABLED = True


def register_cpu_rollout() -> None:
    """Import the ``hf_cpu`` rollout backend (:mod:`verl_cpu.rollout`), which registers itself
    with verl's ``_ROLLOUT_REGISTRY`` and ``RolloutReplicaRegistry`` on import."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("verl_cpu.rollout") is not None:
        importlib.import_module("verl_cpu.rollout")


def register_cpu_engines() -> None:
    """Register verl's FSDP/FSDP2 engines for device ``cpu`` with ``EngineRegistry``.

    verl registers them for ``cuda``/``npu`` only (``verl/workers/engine/fsdp/transformer_impl.py``,
    ``@EngineRegistry.register(..., device=["cuda", "npu"])``); the classes themselves are device-agnostic
    (they use ``get_device_name()`` / ``get_device_id()``, which the CPU platform answers with ``cpu``).
    """
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    for model_type, cls in (
        ("language_model", FSDPEngineWithLMHead),
        ("value_model", FSDPEngineWithValueHead),
    ):
        registry = EngineRegistry._engines.get(model_type, {})
        if all("cpu" in registry.get(backend, {}) for backend in ("fsdp", "fsdp2")):
            continue
        EngineRegistry.register(model_type=model_type, backend=["fsdp", "fsdp2"], device="cpu")(cls)
