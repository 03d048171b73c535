"""Prefix-RFT entry point: ``python recipe/prefix_rft/main_prefix_rft.py [hydra overrides]``.

Composes ``config/prefix_rft_trainer.yaml`` (verl's ``ppo_trainer`` + the ``prefix_rft:`` block), checks the
``prefix_rft`` block and the verl keys it depends on (:func:`prefix_rft.verl_config.validate_verl_config`),
then runs verl's ``run_ppo`` with :class:`prefix_rft.trainer.PrefixRFTTaskRunner`, which builds
:class:`prefix_rft.trainer.PrefixRFTTrainer` (verl's synchronous v1 trainer plus the Prefix-RFT hooks).

Run it as a file (not ``python -m recipe...``: verl's wheel installs an unrelated top-level ``recipe``
package). ``--cfg job`` prints the composed config and launches nothing.
"""

import hydra


@hydra.main(config_path="config", config_name="prefix_rft_trainer", version_base=None)
def main(config):
    """Hydra entry: validate, start Ray, train."""
    from prefix_rft.trainer import run_prefix_rft  # heavy (verl trainer): not needed for --cfg job

    run_prefix_rft(config)


if __name__ == "__main__":
    main()
