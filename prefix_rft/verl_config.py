"""Read the ``prefix_rft:`` block off a composed verl config and check the verl keys it depends on.

Shared by the recipe entry point (checked once at start-up, before Ray starts), the trainer, the agent
loop and the actor loss. Every error names the offending key and the fix.
"""

from __future__ import annotations

from typing import Any

from prefix_rft.config import PrefixRFTConfig, PrefixRFTConfigError, from_dict

AGENT_LOOP_NAME = "prefix_rft_agent"
ADV_ESTIMATOR_NAME = "prefix_rft"

VALIDATION_SPLITS = ("test", "val", "valid", "validation", "eval", "evaluation")
"""``extra_info.split`` values that mark a row as validation: the agent loop never prefixes such a row.

verl 0.9.1 drops the ``validate`` flag before the agent loop runs (``trainer/ppo/v1/agent_loop_tq.py``
l.61-62), so a validation row is recognised by this split value, or by carrying no demonstration."""


def _select(cfg: Any, dotted: str, default: Any = None) -> Any:
    """``cfg.a.b.c`` or ``default`` when any part is missing (works on DictConfig and plain dicts)."""
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        try:
            node = node.get(part, None) if hasattr(node, "get") else getattr(node, part, None)
        except Exception:  # omegaconf struct errors on missing keys
            return default
    return default if node is None else node


def prefix_config_from_verl(cfg: Any) -> PrefixRFTConfig:
    """Build and validate the :class:`PrefixRFTConfig` from ``cfg.prefix_rft`` (rollout n taken from verl)."""
    block = _select(cfg, "prefix_rft")
    if block is None:
        raise PrefixRFTConfigError(
            "the config has no `prefix_rft:` block. Launch through recipe/prefix_rft/main_prefix_rft.py "
            "(config recipe/prefix_rft/config/prefix_rft_trainer.yaml), which defines it."
        )
    rollout_n = _select(cfg, "actor_rollout_ref.rollout.n")
    return from_dict(block, rollout_n=int(rollout_n) if rollout_n is not None else None)


def _fail(key: str, value: Any, why: str, fix: str) -> None:
    raise PrefixRFTConfigError(f"{key}={value!r} is incompatible with Prefix-RFT: {why}. Fix: {fix}")


def validate_verl_config(cfg: Any) -> PrefixRFTConfig:
    """Validate ``cfg.prefix_rft`` and every verl key Prefix-RFT relies on; return the Prefix-RFT config.

    Checks (each error names the key and the fix):
      * the v1 trainer in ``sync`` mode (the Prefix-RFT trainer subclasses verl's ``PPOTrainerSync``);
      * with demo prefixes (``num_prefixed > 0``): ``algorithm.adv_estimator=prefix_rft``, the
        ``prefix_rft_agent`` agent loop, and no rollout-correction bypass mode (demo tokens have no
        rollout log-prob, and bypass mode skips the old-policy entropy that entropy clipping ranks by);
      * ``loss_agg_mode=seq-mean-token-sum-norm`` (Dr.GRPO, the recipe default) needs an explicit
        positive ``actor.loss_scale_factor`` (never the padded width of a dynamic micro-batch);
      * entropy clipping per mini-batch needs fixed mini-batches across PPO epochs (no shuffling when
        ``ppo_epochs > 1``); per micro-batch it needs the current-policy entropy in the actor.
    """
    pcfg = prefix_config_from_verl(cfg)

    use_v1 = _select(cfg, "trainer.use_v1", True)
    if not use_v1:
        _fail(
            "trainer.use_v1",
            use_v1,
            "the Prefix-RFT trainer extends verl's v1 trainer",
            "trainer.use_v1=true",
        )
    mode = _select(cfg, "trainer.v1.trainer_mode", "sync")
    if mode != "sync":
        _fail(
            "trainer.v1.trainer_mode",
            mode,
            "the Prefix-RFT trainer subclasses PPOTrainerSync",
            "trainer.v1.trainer_mode=sync",
        )

    if pcfg.num_prefixed > 0:
        est = _select(cfg, "algorithm.adv_estimator")
        if est != ADV_ESTIMATOR_NAME:
            _fail(
                "algorithm.adv_estimator",
                est,
                "hybrid (demo-prefix) rollouts need the prefix_rft estimator (Dr.GRPO over the mixed group)",
                f"algorithm.adv_estimator={ADV_ESTIMATOR_NAME}",
            )
        agent = _select(cfg, "actor_rollout_ref.rollout.agent.default_agent_loop")
        if agent != AGENT_LOOP_NAME:
            _fail(
                "actor_rollout_ref.rollout.agent.default_agent_loop",
                agent,
                "only the prefix_rft_agent loop splices demonstration prefixes into rollouts",
                f"actor_rollout_ref.rollout.agent.default_agent_loop={AGENT_LOOP_NAME}",
            )
        bypass = _select(cfg, "algorithm.rollout_correction.bypass_mode", False)
        if bypass:
            _fail(
                "algorithm.rollout_correction.bypass_mode",
                bypass,
                "bypass mode uses rollout log-probs as the old policy, but demo-prefix tokens have none, "
                "and it skips the old-policy entropy that entropy clipping ranks by",
                "algorithm.rollout_correction.bypass_mode=false",
            )
    elif pcfg.advantage.mode != "group":
        pass  # without prefixed rollouts both prefix-aware variants equal the group mean: harmless

    ec = pcfg.entropy_clip
    if pcfg.num_prefixed > 0 and ec.enable:
        epochs = int(_select(cfg, "actor_rollout_ref.actor.ppo_epochs", 1))
        shuffle = bool(_select(cfg, "actor_rollout_ref.actor.shuffle", False))
        if ec.scope == "mini_batch" and shuffle and epochs > 1:
            _fail(
                "actor_rollout_ref.actor.shuffle",
                shuffle,
                f"with ppo_epochs={epochs} a shuffled batch forms different mini-batches every epoch, so a "
                "single per-mini-batch entropy ranking cannot match them",
                "actor_rollout_ref.actor.shuffle=false, or prefix_rft.entropy_clip.scope=batch",
            )
        if ec.scope == "micro_batch" and ec.source == "current":
            calc = bool(_select(cfg, "actor_rollout_ref.actor.calculate_entropy", False))
            coeff = float(_select(cfg, "actor_rollout_ref.actor.entropy_coeff", 0.0))
            if not calc and coeff == 0.0:
                _fail(
                    "actor_rollout_ref.actor.calculate_entropy",
                    calc,
                    "entropy_clip.source=current ranks by the current policy's entropy inside the loss",
                    "actor_rollout_ref.actor.calculate_entropy=true",
                )
    agg_mode = _select(cfg, "actor_rollout_ref.actor.loss_agg_mode", "token-mean")
    scale = _select(cfg, "actor_rollout_ref.actor.loss_scale_factor")
    if agg_mode == "seq-mean-token-sum-norm":
        if scale is None:
            _fail(
                "actor_rollout_ref.actor.loss_scale_factor",
                scale,
                "seq-mean-token-sum-norm (Dr.GRPO) divides by a constant; left null, verl divides by the "
                "padded width of each dynamic micro-batch instead",
                "actor_rollout_ref.actor.loss_scale_factor=${data.max_response_length}",
            )
        if isinstance(scale, bool) or not isinstance(scale, int) or scale <= 0:
            _fail(
                "actor_rollout_ref.actor.loss_scale_factor",
                scale,
                "it must be a positive integer (the response budget in tokens)",
                "actor_rollout_ref.actor.loss_scale_factor=${data.max_response_length}",
            )
    if pcfg.loss.prefix_tokens == "exclude" and agg_mode != "seq-mean-token-sum-norm":
        _fail(
            "actor_rollout_ref.actor.loss_agg_mode",
            agg_mode,
            "prefix_rft.loss.prefix_tokens=exclude removes demo tokens from the denominator, which only "
            "seq-mean-token-sum-norm (a constant per response) honours exactly; under token-mean verl's "
            "engine counts them in batch_num_tokens",
            "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm (the recipe default)",
        )
    if pcfg.num_prefixed > 0:
        loss_mode = _select(cfg, "actor_rollout_ref.actor.policy_loss.loss_mode", "vanilla")
        if loss_mode != "vanilla":
            _fail(
                "actor_rollout_ref.actor.policy_loss.loss_mode",
                loss_mode,
                "the Prefix-RFT loss is dual-clip PPO on demo and generated tokens alike",
                "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla",
            )
        check_val_files(_select(cfg, "data.val_files"), pcfg.demo_key)
    return pcfg


def check_val_files(val_files: Any, demo_key: str) -> None:
    """Refuse validation rows that the agent loop would prefix (a silently inflated validation score).

    A row is prefixed when it carries a non-empty demonstration and its ``extra_info.split`` is not one of
    :data:`VALIDATION_SPLITS`. Files that do not exist yet are skipped (verl reports them itself).
    """
    import os

    if val_files is None:
        return
    paths = [val_files] if isinstance(val_files, str) else list(val_files)
    for path in paths:
        path = os.path.expanduser(str(path))
        if not (path.endswith(".parquet") and os.path.isfile(path)):
            continue
        import pyarrow.parquet as pq

        if demo_key not in pq.read_schema(path).names:
            continue
        table = pq.read_table(path, columns=[demo_key, "extra_info"]).to_pydict()
        for row, (demo, extra) in enumerate(zip(table[demo_key], table["extra_info"], strict=True)):
            split = (extra or {}).get("split") if isinstance(extra, dict) else None
            has_demo = bool(demo) and (not isinstance(demo, str) or bool(demo.strip()))
            if has_demo and not (isinstance(split, str) and split.lower() in VALIDATION_SPLITS):
                raise PrefixRFTConfigError(
                    f"data.val_files: {path} row {row} has a demonstration in column {demo_key!r} and "
                    f"extra_info.split={split!r}, so its validation rollouts would start from a demo prefix. "
                    f"Fix: drop the {demo_key!r} column from validation files, or set extra_info.split to one "
                    f"of {VALIDATION_SPLITS}."
                )
