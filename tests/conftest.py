"""Test tiers. Every test module belongs to one tier, marked on each of its tests (``-m unit|integration|e2e``):

* ``unit``: pure functions and small objects; no verl process, no subprocess (seconds).
* ``integration``: real verl objects in this process, or subprocesses that compose / validate the recipe with
  ``--cfg job`` (tens of seconds each); nothing trains.
* ``e2e``: launches of verl's real trainers on CPU (the recipe, the SFT trainer, the benchmarks; minutes each).

``make test`` runs all three (CI's command); ``make test-fast`` runs ``-m "not e2e"``. A new test module must be
added to :data:`TIERS` (collection fails otherwise), so no test is left out of a tier.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS: dict[str, tuple[str, ...]] = {
    "unit": (
        "test_ablation_core",
        "test_checkpoint",
        "test_arith_task",
        "test_core_advantage_entropy",
        "test_core_config_isolation",
        "test_core_loss",
        "test_core_schedule_splice",
        "test_data",
        "test_doc_citations",
        "test_eval",
        "test_plot",
        "test_reward",
        "test_sft_data",
    ),
    "integration": (
        "test_actor_loss",
        "test_agent_loop",
        "test_cpu_demo_cli",
        "test_cpu_platform",
        "test_cpu_rollout",
        "test_guidance",
        "test_launcher_defaults",
        "test_learning_bench",
        "test_packaging",
        "test_presets",
        "test_recipe_config",
        "test_reference_parity",
        "test_sft_launchers",
        "test_smoke",
        "test_trainer_integration",
        "test_verl_patches",
        "test_vllm_cpu_overrides",
    ),
    "e2e": (
        "test_benchmarks",
        "test_e2e_cpu",
        "test_guidance_e2e",
        "test_learning_cpu",
        "test_sft_cpu",
    ),
}
TIER_OF = {module: tier for tier, modules in TIERS.items() for module in modules}


def pytest_configure(config: pytest.Config) -> None:
    for tier in TIERS:
        config.addinivalue_line("markers", f"{tier}: a test of the {tier} tier (tests/conftest.py)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unclassified = set()
    for item in items:
        module = Path(str(item.fspath)).stem
        tier = TIER_OF.get(module)
        if tier is None:
            unclassified.add(module)
            continue
        item.add_marker(getattr(pytest.mark, tier))
    if unclassified:
        raise pytest.UsageError(
            f"test modules without a tier: {sorted(unclassified)}; add each to TIERS in tests/conftest.py"
        )
