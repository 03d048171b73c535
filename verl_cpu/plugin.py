"""verl plugin module for the CPU path: ``VERL_USE_EXTERNAL_MODULES=verl_cpu.plugin`` together with
``VERL_PLATFORM=cpu`` (verl imports it during ``import verl``, before the platform is resolved).

Importing it always registers the ``cpu`` platform with verl's ``PlatformRegistry`` (inert unless
``VERL_PLATFORM=cpu``). When ``VERL_PLATFORM=cpu`` is set it also registers verl's FSDP engines for
device ``cpu``, imports the ``hf_cpu`` rollout backend and applies the CPU workarounds of :mod:`verl_cpu.patches`.
"""

from __future__ import annotations

from verl_cpu.platform import PlatformCPU, cpu_platform_requested  # noqa: F401  (registers "cpu")

if cpu_platform_requested():
    from verl_cpu import enable_cpu_backend

    enable_cpu_backend()
