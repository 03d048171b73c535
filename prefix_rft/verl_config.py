"""Read the ``prefix_rft:`` block off a composed verl config and check the verl keys it depends on.

Shared by the recipe entry point (checked once at start-up, before Ray starts), the trainer, the agent
loop and the actor loss. Every error names the offending key and the fix.
"""

from __future__ import annotations

import json
import os
from typing import Any

from prefix_rft.config import PrefixRFTConfig, PrefixRFTConfigError, from_dict

AGENT_LOOP_NAME = "prefix_rft_agent"
ADV_ESTIMATOR_NAME = "prefix_rft"

RECIPE_LOSS_AGG_MODE = "seq-mean-token-sum-norm"
"""The recipe's ``actor_rollout_ref.actor.loss_agg_mode``: Dr.GRPO's objective (paper A.2), named in fixes; the
recipe yaml writes it (a test checks that they agree)."""

VERL_LOSS_AGG_MODE = "token-mean"
"""What verl runs when a config has no ``loss_agg_mode`` (the default of verl's
``verl.workers.config.ActorConfig``; a test reads it there), so such a config is checked as verl will run it.
Not imported here: ``--cfg job`` validates without importing verl."""

VALIDATION_SPLITS = ("test", "val", "valid", "validation", "eval", "evaluation")
"""``extra_info.split`` values that mark a row as validation: the agent loop never prefixes such a row.

verl 0.9.1 drops the ``validate`` flag before the agent loop runs (``verl.trainer.ppo.v1.agent_loop_tq``
``AgentLoopWorkerTQ.generate_sequences``), so a validation row is recognised by this split value, or by carrying
no demonstration."""


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
    if rollout_n is not None and not (
        isinstance(rollout_n, int) and not isinstance(rollout_n, bool) and rollout_n >= 1
    ):
        raise PrefixRFTConfigError(
            f"actor_rollout_ref.rollout.n={rollout_n!r} is invalid: expected an integer >= 1 (rollouts per "
            "prompt; the paper uses 8). Fix: actor_rollout_ref.rollout.n=8"
        )
    return from_dict(block, rollout_n=int(rollout_n) if rollout_n is not None else None)


SGLANG_HEADROOM = 1
"""Tokens SGLang's server keeps free of the context window (its ``max_possible_tokens`` subtracts 1)."""


def model_max_position_embeddings(model_path: Any) -> int | None:
    """``max_position_embeddings`` from the model's HF ``config.json`` (``text_config`` too), or None.

    Reads a local model folder, else the Hugging Face cache (no network). None when neither has it.
    """
    if not model_path:
        return None
    path = os.path.expanduser(str(model_path))
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(model_path), "config.json")
        except Exception:  # noqa: BLE001 - not a hub id, no cache: the check is skipped
            cached = None
        if not isinstance(cached, str):
            return None
        config_file = cached
    with open(config_file) as f:
        hf = json.load(f)
    value = hf.get("max_position_embeddings") or (hf.get("text_config") or {}).get("max_position_embeddings")
    return int(value) if value else None


def context_window(cfg: Any) -> tuple[int | None, str]:
    """Tokens prompt + response may span on the rollout server, and where that number comes from.

    verl's servers use ``actor_rollout_ref.rollout.max_model_len``, or the model's
    ``max_position_embeddings`` when it is unset (``vLLMHttpServer._validate_configs``); SGLang keeps
    :data:`SGLANG_HEADROOM` token free. ``(None, "")`` when neither number is known.
    """
    max_model_len = _select(cfg, "actor_rollout_ref.rollout.max_model_len")
    if max_model_len is not None:
        window, source = int(max_model_len), f"actor_rollout_ref.rollout.max_model_len={int(max_model_len)}"
    else:
        mpe = model_max_position_embeddings(_select(cfg, "actor_rollout_ref.model.path"))
        if mpe is None:
            return None, ""
        window, source = mpe, f"the model's max_position_embeddings={mpe}"
    if _select(cfg, "actor_rollout_ref.rollout.name") == "sglang":
        window -= SGLANG_HEADROOM
        source += f" minus SGLang's {SGLANG_HEADROOM}-token headroom"
    return window, source


def check_context_length(cfg: Any) -> None:
    """Fail unless ``data.max_prompt_length + data.max_response_length`` fits the server's context window.

    Otherwise every request whose prompt + prefix overflows raises inside the server and its whole prompt
    group is dropped as a failed rollout. Also refuses ``rollout.max_model_len`` above the model's
    ``max_position_embeddings`` (verl's server refuses it later, after loading the model).
    """
    max_model_len = _select(cfg, "actor_rollout_ref.rollout.max_model_len")
    mpe = model_max_position_embeddings(_select(cfg, "actor_rollout_ref.model.path"))
    if max_model_len is not None and mpe is not None and int(max_model_len) > mpe:
        raise PrefixRFTConfigError(
            f"actor_rollout_ref.rollout.max_model_len={int(max_model_len)} exceeds the model's "
            f"max_position_embeddings={mpe} (config.json of actor_rollout_ref.model.path). "
            f"Fix: actor_rollout_ref.rollout.max_model_len<={mpe}, or a model with a longer context"
        )
    window, source = context_window(cfg)
    prompt = _select(cfg, "data.max_prompt_length")
    response = _select(cfg, "data.max_response_length")
    if window is None or prompt is None or response is None:
        return
    total = int(prompt) + int(response)
    if total > window:
        raise PrefixRFTConfigError(
            f"data.max_prompt_length + data.max_response_length = {int(prompt)} + {int(response)} = {total} "
            f"exceeds the rollout context window of {window} tokens ({source}): requests that long fail "
            "inside the server and their prompt group is dropped. Fix: lower data.max_response_length or "
            f"data.max_prompt_length so they sum to <= {window}, or use a model with a longer context "
            "(and actor_rollout_ref.rollout.max_model_len to match)"
        )


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
      * per-prompt guidance (``prefix_rft.guidance.mode`` not ``schedule``) needs every group scored: no
        dynamic sampling (``algorithm.filter_groups.enable``);
      * with demo prefixes, ``actor_rollout_ref.rollout.n >= 2`` (a group of one has advantage 0) and a
        training file whose demo column holds at least one usable demonstration;
      * checkpoints (:func:`check_checkpoints`): ``trainer.default_local_dir`` writable with room for one
        checkpoint, and a complete checkpoint to resume from when one is expected;
      * entropy clipping per mini-batch needs fixed mini-batches across PPO epochs (no shuffling when
        ``ppo_epochs > 1``);
      * what the actor loss relies on and does not re-check per micro-batch (:func:`check_actor_loss`).
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

    rollout_n = _select(cfg, "actor_rollout_ref.rollout.n")
    if pcfg.num_prefixed > 0 and rollout_n is not None and int(rollout_n) < 2:
        _fail(
            "actor_rollout_ref.rollout.n",
            rollout_n,
            f"with prefix_rft.num_prefixed={pcfg.num_prefixed} every group of {rollout_n} rollout is scored "
            "against its own mean (the group-relative prefix_rft advantage), so every advantage is 0 and "
            "there is no policy gradient at all",
            "actor_rollout_ref.rollout.n=8 (the paper), or any value >= 2",
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
    if pcfg.guidance.mode != "schedule" and _select(cfg, "algorithm.filter_groups.enable", False):
        _fail(
            "algorithm.filter_groups.enable",
            True,
            f"prefix_rft.guidance.mode={pcfg.guidance.mode} learns from every prompt's scores, and dynamic "
            "sampling drops exactly the groups it needs (all failed, all solved) before they are scored",
            "algorithm.filter_groups.enable=false, or prefix_rft.guidance.mode=schedule",
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
    agg_mode = _select(cfg, "actor_rollout_ref.actor.loss_agg_mode", VERL_LOSS_AGG_MODE)
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
            f"actor_rollout_ref.actor.loss_agg_mode={RECIPE_LOSS_AGG_MODE} (the recipe default)",
        )
    check_actor_loss(cfg, pcfg)
    if pcfg.num_prefixed > 0:
        check_val_files(_select(cfg, "data.val_files"), pcfg.demo_key)
        check_train_files(_select(cfg, "data.train_files"), pcfg.demo_key)
    check_context_length(cfg)
    check_checkpoints(cfg)
    return pcfg


def check_actor_loss(cfg: Any, pcfg: PrefixRFTConfig) -> None:
    """The actor config that :func:`prefix_rft.actor_loss.prefix_rft_ppo_loss` relies on without re-checking it.

    The loss takes its Prefix-RFT path on every batch that carries ``prefix_mask``, i.e. whenever the
    ``prefix_rft_agent`` loop rolls out, with or without demo prefixes (``num_prefixed=0`` gives all-zero masks).
    That path needs: ``policy_loss.loss_mode=vanilla`` (its policy term is dual-clip PPO on demo and generated
    tokens alike), ``clip_ratio_c > 1`` (the dual clip's bound, as verl's ``compute_policy_loss_vanilla``
    asserts), and, when demo tokens are ranked inside the loss by the current policy's entropy
    (``entropy_clip.scope=micro_batch``, ``source=current``), that entropy in the model output: verl computes it
    when ``actor.calculate_entropy`` is true or ``actor.entropy_coeff`` is not 0
    (``verl.trainer.ppo.v1.trainer_base.PPOTrainer._update_actor``). Other agent loops give plain batches, which
    the loss hands to verl's ``ppo_loss`` untouched.
    """
    if _select(cfg, "actor_rollout_ref.rollout.agent.default_agent_loop") != AGENT_LOOP_NAME:
        return
    loss_mode = _select(cfg, "actor_rollout_ref.actor.policy_loss.loss_mode", "vanilla")
    if loss_mode != "vanilla":
        _fail(
            "actor_rollout_ref.actor.policy_loss.loss_mode",
            loss_mode,
            "the Prefix-RFT loss is dual-clip PPO on demo and generated tokens alike",
            "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla",
        )
    clip_ratio_c = _select(cfg, "actor_rollout_ref.actor.clip_ratio_c", 3.0)
    if isinstance(clip_ratio_c, bool) or not isinstance(clip_ratio_c, (int, float)) or not clip_ratio_c > 1.0:
        _fail(
            "actor_rollout_ref.actor.clip_ratio_c",
            clip_ratio_c,
            "it is the lower bound of dual-clip PPO's ratio for negative advantages and must be > 1",
            "actor_rollout_ref.actor.clip_ratio_c=3.0 (the paper)",
        )
    ec = pcfg.entropy_clip
    if ec.enable and ec.scope == "micro_batch" and ec.source == "current":
        calc = bool(_select(cfg, "actor_rollout_ref.actor.calculate_entropy", False))
        coeff = float(_select(cfg, "actor_rollout_ref.actor.entropy_coeff", 0.0))
        if not calc and coeff == 0.0:
            _fail(
                "actor_rollout_ref.actor.calculate_entropy",
                calc,
                "entropy_clip.source=current ranks by the current policy's entropy inside the loss",
                "actor_rollout_ref.actor.calculate_entropy=true",
            )


def check_checkpoints(cfg: Any) -> None:
    """``trainer.default_local_dir`` can take the next checkpoint, and a resume has a complete one to load.

    See :mod:`prefix_rft.checkpoint`; its :class:`~prefix_rft.checkpoint.CheckpointError` is reported as a
    config error (the same exit as every start-up check).
    """
    from prefix_rft.checkpoint import (
        CheckpointError,
        check_checkpoint_dir,
        check_resume_path,
        checkpoint_root,
        resolve_resume,
    )

    try:
        check_checkpoint_dir(cfg)
        mode = _select(cfg, "trainer.resume_mode", "auto")
        local_dir = _select(cfg, "trainer.default_local_dir")
        if mode == "auto" and local_dir is not None:
            resolve_resume(checkpoint_root(local_dir))
        elif mode == "resume_path" and isinstance(_select(cfg, "trainer.resume_from_path"), str):
            check_resume_path(checkpoint_root(_select(cfg, "trainer.resume_from_path")))
    except CheckpointError as err:
        raise PrefixRFTConfigError(str(err)) from err


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


TRAIN_SAMPLE_ROWS = 256
"""Rows of each training file checked against the data contract at start-up (the first ones)."""


def check_train_files(train_files: Any, demo_key: str, sample_rows: int = TRAIN_SAMPLE_ROWS) -> None:
    """Check each ``data.train_files`` parquet at start-up: the demo column exists, and a sample of rows
    follows the data contract (``prefix_rft/data/contract.py``; schema and the demo column's type).

    A wrong ``prefix_rft.demo_key`` or a demo column that is null / empty in every row would train as plain
    RFT, a demo column of ints would drop every hybrid sample; all are refused here naming the file, row,
    key and fix. Files that do not exist yet are
    skipped (verl reports them itself).
    """
    if train_files is None:
        return
    paths = [train_files] if isinstance(train_files, str) else list(train_files)
    for path in paths:
        path = os.path.expanduser(str(path))
        if not (path.endswith(".parquet") and os.path.isfile(path)):
            continue
        import pyarrow.parquet as pq  # only for a file that exists: a dry run on another machine skips it

        from prefix_rft.data.contract import has_usable_demo, row_problems

        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        if demo_key not in names:
            raise PrefixRFTConfigError(
                f"data.train_files: {path} has no column prefix_rft.demo_key={demo_key!r} (its columns: "
                f"{names}), so no rollout would start from a demonstration. Fix: prefix_rft.demo_key=<the demo "
                "column>, or prepare the file with `python -m prefix_rft.data prepare ...`"
            )
        batch = next(parquet.iter_batches(batch_size=sample_rows), None)
        sample = batch.to_pylist() if batch is not None else []
        for row_index, row in enumerate(sample):
            problems = row_problems(row, demo_key=demo_key)
            if problems:
                raise PrefixRFTConfigError(
                    f"data.train_files: {path} row {row_index} breaks the data contract: "
                    + "; ".join(problems)
                    + f'. Fix the file (`python -c "from prefix_rft.data.contract import validate_parquet; '
                    f"validate_parquet('{path}', demo_key='{demo_key}')\"` lists every bad row), or point "
                    "prefix_rft.demo_key at the right column"
                )
        if not any(has_usable_demo(row.get(demo_key)) for row in sample) and not _any_usable_demo(
            parquet, demo_key
        ):
            raise PrefixRFTConfigError(
                f"data.train_files: {path} has no usable demonstration in column prefix_rft.demo_key="
                f"{demo_key!r} (all {parquet.metadata.num_rows} rows are null or empty), so no rollout would "
                "start from a demonstration and the run would be plain RFT. Fix: point prefix_rft.demo_key at "
                "the column holding the demonstrations, re-prepare the file with `python -m prefix_rft.data "
                "prepare ...`, or set prefix_rft.num_prefixed=0 to train RFT on purpose"
            )


def _any_usable_demo(parquet: Any, demo_key: str, batch_rows: int = 1024) -> bool:
    """True as soon as one row of the file's demo column holds a usable demonstration (reads that column only)."""
    from prefix_rft.data.contract import has_usable_demo

    for batch in parquet.iter_batches(batch_size=batch_rows, columns=[demo_key]):
        if any(has_usable_demo(value) for value in batch.column(0).to_pylist()):
            return True
    return False


def check_training_rows(num_rows: int, cfg: Any) -> None:
    """Fail when verl's training dataset is empty after its filters, naming ``data.max_prompt_length``.

    verl's dataset drops prompts longer than ``data.max_prompt_length`` (``data.filter_overlong_prompts``);
    when that drops every row, the sampler fails with an opaque ``num_samples=0``.
    """
    if num_rows > 0:
        return
    max_prompt = _select(cfg, "data.max_prompt_length")
    raise PrefixRFTConfigError(
        f"data.train_files {_select(cfg, 'data.train_files')!r} gave 0 training rows: every prompt is longer "
        f"than data.max_prompt_length={max_prompt} tokens (verl's data.filter_overlong_prompts dropped them). "
        "Fix: raise data.max_prompt_length (and keep it + data.max_response_length within the model's "
        "context), or shorten the prompts"
    )
