"""Register every Prefix-RFT piece with verl: import this module in each verl process.

How it gets there: ``actor_rollout_ref.model.external_lib: prefix_rft.plugin`` (set by the recipe yaml).
verl imports it when it builds ``HFModelConfig`` (``HFModelConfig.__post_init__``), i.e. in the
trainer (task runner), the actor/rollout workers and the agent-loop workers; the env variable
``VERL_USE_EXTERNAL_MODULES=prefix_rft.plugin`` works too. We deliberately register no ``verl.plugins``
entry point: verl loads every such entry point on *every* ``import verl`` (entry-point discovery in ``verl/__init__.py``),
which would add ~5 s of imports to each verl process of a user who merely has prefix-rft installed.

What it registers: the ``prefix_rft`` advantage estimator and the ``prefix_rft_agent`` agent loop.
Importing it is idempotent.
"""

from __future__ import annotations

import prefix_rft.advantage  # noqa: F401  (register_adv_est("prefix_rft"))
import prefix_rft.agent_loop  # noqa: F401  (@register("prefix_rft_agent"))
