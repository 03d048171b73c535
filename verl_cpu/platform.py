"""A CPU platform for verl 0.9.1, registered through verl's own platform registry.

verl resolves its device once per process with ``verl.plugin.platform.get_platform()``: it probes the
platforms registered with ``PlatformRegistry`` (nvidia, huawei, amd) and falls back to nvidia (``cuda``
+ ``nccl``). This module registers a ``cpu`` platform. It is chosen only when ``VERL_PLATFORM=cpu`` is
set in the environment (verl's documented override), so importing it on a GPU machine changes nothing:
``is_platform_available`` always answers ``False`` and auto-detection never picks it.

What the platform tells verl:
- device ``cpu``, communication backend ``gloo`` (see ``verl_cpu.patches`` for the one place
  where verl builds an invalid ``cpu:gloo,cpu:gloo`` backend string);
- Ray resource ``GPU``: verl's resource pools always ask Ray for an accelerator and
  ``ResourcePoolManager._check_resource_available`` counts only ``GPU``/``NPU``, so the CPU run starts
  Ray with a logical GPU count (one "slot" per trainer process; no CUDA is ever touched);
- a ``device_module`` that answers the ``torch.cuda``-style calls verl makes (``empty_cache``,
  ``mem_get_info``, ``max_memory_allocated``, ``get_rng_state``, ...) with CPU equivalents or no-ops.
"""

from __future__ import annotations

import os
import types
from contextlib import contextmanager
from typing import Any, Optional

import psutil
import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

PLATFORM_NAME = "cpu"


def _build_cpu_device_module() -> types.ModuleType:
    """A ``torch.cuda``-shaped namespace for the CPU.

    verl calls ``get_torch_device().<fn>`` at ~80 sites. ``torch.cpu`` already provides ``synchronize``,
    ``is_available``, ``current_stream``, ``stream``, ``Stream``, ``Event``, ``set_device``, ``device_count``
    and ``current_device``; the memory / RNG / IPC helpers it lacks are filled in here.
    """
    mod = types.ModuleType("verl_cpu_device")
    for name in dir(torch.cpu):
        if not name.startswith("__"):
            setattr(mod, name, getattr(torch.cpu, name))

    def _noop(*args: Any, **kwargs: Any) -> None:
        return None

    def _zero(*args: Any, **kwargs: Any) -> int:
        return 0

    def mem_get_info(device: Any = None) -> tuple[int, int]:
        vm = psutil.virtual_memory()
        return int(vm.available), int(vm.total)

    mod.empty_cache = _noop
    mod.ipc_collect = _noop
    mod.reset_peak_memory_stats = _noop
    mod.set_per_process_memory_fraction = _noop
    mod.memory_allocated = _zero
    mod.memory_reserved = _zero
    mod.max_memory_allocated = _zero
    mod.max_memory_reserved = _zero
    mod.mem_get_info = mem_get_info
    mod.get_device_name = lambda device=None: "cpu"
    mod.get_rng_state = lambda device=None: torch.get_rng_state()
    mod.set_rng_state = lambda state, device=None: torch.set_rng_state(state)
    mod.manual_seed = lambda seed: torch.manual_seed(seed)
    mod.manual_seed_all = lambda seed: torch.manual_seed(seed)
    mod.is_bf16_supported = lambda *a, **k: True
    return mod


_CPU_DEVICE_MODULE = _build_cpu_device_module()


def cpu_platform_requested() -> bool:
    """True when this process was asked to run verl on CPU (``VERL_PLATFORM=cpu``)."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """verl platform for a CPU-only machine (tests, the demo). Selected with ``VERL_PLATFORM=cpu`` only."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return _CPU_DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected: a GPU machine must not silently train on CPU. Use VERL_PLATFORM=cpu.
        return False

    def current_device(self) -> int:
        # verl uses this as a device id (``torch.device(get_device_id())``-style and ``.to(id)``);
        # the CPU platform answers with the device string that torch accepts everywhere.
        return "cpu"  # type: ignore[return-value]

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray sets CUDA_VISIBLE_DEVICES for actors holding a (logical) GPU; on a CPU build it is inert.
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_gpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
