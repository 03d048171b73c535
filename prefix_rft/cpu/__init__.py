"""Run verl 0.9.1's own (v1) trainer on a CPU-only machine.

Switched on by the environment only: ``VERL_PLATFORM=cpu`` plus
``VERL_USE_EXTERNAL_MODULES=prefix_rft.cpu.plugin``, so that verl imports :mod:`prefix_rft.cpu.plugin` during
``import verl`` in every process (``actor_rollout_ref.model.external_lib`` alone is too late for the driver:
``verl.trainer.main_ppo`` resolves the platform at import time). ``prefix_rft.cpu.launch`` sets both and holds
the CPU overrides; see docs/CPU.md.
"""

from __future__ import annotations

_ENABLED = False


def enable_cpu_backend() -> None:
    """Register the CPU pieces with verl's registries and apply the CPU workarounds (idempotent)."""
    global _ENABLED
    if _ENABLED:
        return
    from prefix_rft.cpu.patches import apply_cpu_patches

    apply_cpu_patches()
    register_cpu_engines()
    register_cpu_rollout()
    _ENABLED = True


def register_cpu_rollout() -> None:
    """Import the ``hf_cpu`` rollout backend (:mod:`prefix_rft.cpu.rollout`), which registers itself
    with verl's ``_ROLLOUT_REGISTRY`` and ``RolloutReplicaRegistry`` on import."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("prefix_rft.cpu.rollout") is not None:
        importlib.import_module("prefix_rft.cpu.rollout")


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
