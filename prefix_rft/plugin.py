"""Register every Prefix-RFT piece with verl: import this module in each verl process.

Two routes, both set up by the project:
  * ``actor_rollout_ref.model.external_lib: prefix_rft.plugin`` (the recipe yaml): verl imports it when
    it builds ``HFModelConfig`` (``verl/workers/config/model.py`` l.149), i.e. in the trainer (task
    runner), the actor/rollout workers and the agent-loop workers.
  * the ``verl.plugins`` entry point in pyproject.toml (``prefix_rft = "prefix_rft.plugin"``): verl's
    ``__init__`` loads every entry point of that group on ``import verl`` (``verl/__init__.py`` l.55-76,
    policy ``VERL_USE_EXTERNAL_PLUGINS``; a failing plugin is only logged at debug level, hence the
    ``external_lib`` route as well).

What it registers: the ``prefix_rft`` advantage estimator and the ``prefix_rft_agent`` agent loop.
Importing it is idempotent.
"""

from __future__ import annotations

import importlib
import importlib.util

import prefix_rft.advantage  # noqa: F401  (register_adv_est("prefix_rft"))

# The agent loop registers itself with verl's @register("prefix_rft_agent") on import.
if importlib.util.find_spec("prefix_rft.agent_loop") is not None:
    importlib.import_module("prefix_rft.agent_loop")
