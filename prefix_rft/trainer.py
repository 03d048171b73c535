"""The Prefix-RFT trainer: verl 0.9.1's synchronous v1 trainer plus a few small hooks.

``PrefixRFTTrainer`` subclasses ``verl.trainer.ppo.v1.trainer_sync.PPOTrainerSync`` and keeps
``trainer.v1.trainer_mode=sync`` (``trainer_base.py`` tests that string literally). Every override calls
``super()`` and adds one thing:

* ``_setup``: installs the Prefix-RFT actor loss on the actor workers with verl's ``set_loss_fn``
  (``engine_workers.ActorRolloutRefWorker.set_loss_fn``, ONE_TO_ALL), replacing the ``ppo_loss`` partial that
  ``ActorRolloutRefWorker.init_model`` installed.
* ``_compute_old_log_prob``: verl computes the old-policy log-probs and entropy and writes them to
  TransferQueue (``trainer_base.PPOTrainer._compute_old_log_prob``). Demo-prefix tokens have no behaviour log-prob (the
  agent loop writes 0.0 there), so we set ``rollout_log_probs := old_log_probs`` on them: rollout
  correction (IS weights, rejection, off-policy metrics; ``compute_rollout_correction_and_add_to_batch``) then sees a
  log-ratio of exactly 0 on demo tokens, i.e. it is neutral there, token- and sequence-level alike.
* ``_compute_advantage``: verl fetches a fixed field list and calls the registered estimator
  with fixed keywords (``verl.trainer.ppo.ray_trainer.compute_advantage``); we run it inside
  :func:`prefix_rft.advantage.prefix_rows` so the ``prefix_rft`` estimator sees each row's
  ``is_prefixed`` and ``prefix_len``. Then we build the entropy keep-mask (``prefix_keep_mask``, paper sec. 3) on the driver,
  exactly, over each PPO mini-batch as the actor will form it (or the whole batch), write it to
  TransferQueue for the actor loss, and compute the ``prefix_rft/`` metrics. ``prefix_mask`` is rewritten
  as ``prefix_mask & response_mask``: verl's padding rows (``padding_utils.py``
  ``upsample_batch_to_divisible_size``) copy a real row's fields, so their copied ``prefix_mask`` would not
  match their 1-token response; after the rewrite they carry no demo token.

How the actor forms mini-batches (verified in 0.9.1): the batch (already reordered by ``_balance_batch``
and padded to a multiple of lcm(dp, mini-batch)) is cut into ``dp`` contiguous chunks, chunk ``r`` going to
data-parallel rank ``r`` (``BatchMeta.chunk``, ``decorator.dispatch_nd_compute_dataproto``); each rank
splits its chunk with ``tensordict_utils.make_iterator(mini_batch_size // dp, seed=data_loader_seed + r,
shuffle=actor.shuffle)`` (``TrainingWorker.train_mini_batch``). Global mini-batch ``j`` = the ``j``-th local
mini-batch of every rank. :func:`actor_minibatch_group_ids` replays that with the same ``make_iterator``.

Per-prompt guidance (``prefix_rft.guidance.mode`` ``on_failure`` / ``adaptive``, :mod:`prefix_rft.core.guidance`):
the table of every prompt's state lives here, on the driver, keyed by the agent loop's stable row id
(:func:`prefix_rft.agent_loop.row_uid`). ``_next_train_batch`` (after verl's) writes each row's decision into
the batch (:data:`prefix_rft.agent_loop.GUIDED_FIELD` / ``GUIDE_RATIO_FIELD``), so every agent-loop worker on
every node reads the one decision; ``_compute_advantage`` feeds the step's scores back into the table;
``_save_checkpoint`` writes it into the checkpoint folder (:data:`GUIDANCE_FILE`) before verl's own files and
``_load_checkpoint`` reads it back, so a resumed run continues with the exact table.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
import torch
import transfer_queue as tq
from tensordict import TensorDict
from verl.protocol import DataProto
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.utils.debug.metrics import calculate_debug_metrics
from verl.workers.utils.padding import response_to_nested

from prefix_rft.actor_loss import REPLAY_FIELDS
from prefix_rft.advantage import ESTIMATOR_NAME, prefix_rows
from prefix_rft.agent_loop import GUIDE_RATIO_FIELD, GUIDED_FIELD, extract_demos, row_uid
from prefix_rft.config import EntropyClipConfig, PrefixRFTConfig
from prefix_rft.core.entropy import select_demo_tokens
from prefix_rft.core.guidance import Decision, GuidanceTable
from prefix_rft.core.schedule import keeps_demo, ratio_bounds, stable_seed
from prefix_rft.verl_config import check_training_rows, validate_verl_config

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))

TOKEN_FIELD = "prefix_mask"
KEEP_FIELD = "prefix_keep_mask"
MINIBATCH_FIELDS = REPLAY_FIELDS
"""Per-row replay record written with the keep-mask: predicted mini-batch id, mini-batches per epoch, step.

The actor loss checks every micro-batch against it (:func:`prefix_rft.actor_loss.check_minibatch_replay`)."""
ROW_FIELDS = ("is_prefixed", "prefix_ratio", "prefix_len", "demo_missing", "demo_truncated")

METRIC_KEYS = (
    "ratio_low",
    "ratio_high",
    "ratio_mean",
    "prefixed_frac",
    "prefix_token_frac",
    "kept_frac",
    "kept_tokens",
    "prefix_length",
    "continuation_length",
    "entropy_prefix",
    "entropy_continuation",
    "score_prefixed",
    "score_on_policy",
    "demo_missing",
    "demo_truncated",
)
"""Keys of :func:`compute_prefix_metrics`, logged under ``prefix_rft/`` every step (listed in the recipe README)."""
PROMPT_METRIC_KEYS = (
    "demo_tokens_trained",
    "guided_frac",
    "prompt_ratio_mean",
    "prompt_ratio_p10",
    "prompt_ratio_p90",
)
"""Keys logged under ``prefix_rft/`` every step next to :data:`METRIC_KEYS` (:func:`compute_guidance_metrics` and
the demo tokens that get a gradient), in every guidance mode."""
GUIDANCE_FILE = "prefix_rft_guidance.json"
"""The per-prompt guidance table inside each ``global_step_<N>`` checkpoint folder."""
REWARD_TIMEOUTS_METRIC = "prefix_rft/reward_timeouts"
"""Also logged every step: how many of the step's answers had their reward check cut by its bound."""


# ----------------------------------------------------------------------------- pure helpers


def to_padded(x: Any, width: int | None = None, pad: float = 0) -> torch.Tensor:
    """A TransferQueue per-token field (jagged or regular) as a right-padded ``[B, width]`` tensor."""
    if isinstance(x, torch.Tensor) and x.is_nested:
        x = x.to_padded_tensor(pad)
    if width is not None and x.shape[1] != width:
        if x.shape[1] > width:
            x = x[:, :width]
        else:
            x = torch.nn.functional.pad(x, (0, width - x.shape[1]), value=pad)
    return x


def to_rows(x: Any) -> torch.Tensor:
    """A TransferQueue per-sample field (tensor ``[B]``/``[B,1]`` or non-tensor stack) as a 1-D tensor."""
    if isinstance(x, torch.Tensor):
        return x.reshape(x.shape[0], -1)[:, 0] if x.dim() > 1 else x
    return torch.as_tensor([float(v) for v in list(x)])


def as_nested(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a jagged nested tensor (TransferQueue returns a regular tensor when all rows are equal)."""
    if x.is_nested:
        return x
    return torch.nested.as_nested_tensor(list(x.unbind(0)), layout=torch.jagged)


def actor_minibatch_group_ids(
    batch_size: int, dp_size: int, mini_batch_size: int, shuffle: bool = False, seed: int = 42
) -> torch.Tensor:
    """Index of the PPO mini-batch each row of the (balanced, padded) batch lands in during the update.

    Replays verl 0.9.1's split (``TrainingWorker.train_mini_batch``): ``dp_size`` contiguous chunks, one per
    data-parallel rank, each cut by ``tensordict_utils.make_iterator`` into ``mini_batch_size // dp_size``
    rows with the rank's seed ``seed + rank``. With ``dp_size=1`` and no shuffle this is
    :func:`prefix_rft.core.entropy.minibatch_group_ids`. The first epoch's split is returned (every epoch
    uses the same one unless ``shuffle`` is on, which the config check forbids with ``ppo_epochs > 1``).
    """
    if batch_size % dp_size or mini_batch_size % dp_size or batch_size % mini_batch_size:
        raise ValueError(
            f"batch of {batch_size} rows cannot be split into mini-batches of {mini_batch_size} over {dp_size} "
            "data-parallel ranks; verl pads the batch to a multiple of lcm(dp, ppo_mini_batch_size * rollout.n)"
        )
    local, local_mini = batch_size // dp_size, mini_batch_size // dp_size
    group = torch.empty(batch_size, dtype=torch.long)
    for rank in range(dp_size):
        rows = TensorDict({"row": torch.arange(rank * local, (rank + 1) * local)}, batch_size=[local])
        it = tu.make_iterator(
            rows,
            mini_batch_size=local_mini,
            epochs=1,
            seed=seed + rank,
            dataloader_kwargs={"shuffle": shuffle},
        )
        for j, mini in enumerate(it):
            group[mini["row"]] = j
    return group


def minibatch_replay_fields(group_ids: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
    """The :data:`MINIBATCH_FIELDS` of each row (``[B]`` int64): predicted mini-batch, their count, step."""
    rows = group_ids.shape[0]
    return {
        MINIBATCH_FIELDS[0]: group_ids.to(torch.int64),
        MINIBATCH_FIELDS[1]: torch.full((rows,), int(group_ids.max()) + 1 if rows else 0, dtype=torch.int64),
        MINIBATCH_FIELDS[2]: torch.full((rows,), int(step), dtype=torch.int64),
    }


def build_keep_mask(
    entropy: torch.Tensor,
    prefix_mask: torch.Tensor,
    ecfg: EntropyClipConfig,
    group_ids: torch.Tensor | None,
    seed: int = 0,
) -> torch.Tensor:
    """``prefix_keep_mask`` (int ``[B, T]``): the demo tokens whose advantage survives entropy clipping.

    ``scope=mini_batch``: ``ceil(k*N_g)`` prefix tokens of each mini-batch ``g`` (``group_ids``);
    ``scope=batch``: of the whole batch; which ones is ``ecfg.selection`` (top / random with ``seed`` /
    bottom), via :func:`prefix_rft.core.entropy.select_demo_tokens`. ``entropy`` is the old policy's
    (``source=old``, the only source on the driver). ``enable=false`` keeps every prefix token;
    ``scope=micro_batch`` cannot be decided on the driver (micro-batches form inside the engine), so every
    prefix token is a candidate and the actor loss ranks them per micro-batch.
    """
    prefix = prefix_mask.bool()
    if not ecfg.enable or ecfg.scope == "micro_batch":
        return prefix.long()
    groups = group_ids if ecfg.scope == "mini_batch" else None
    return select_demo_tokens(
        entropy, prefix, ecfg.top_ratio, ecfg.selection, group_ids=groups, seed=seed
    ).long()


def selection_seed(seed: int, global_step: int) -> int:
    """Seed of ``entropy_clip.selection=random`` at ``global_step``: a fresh, reproducible draw each step."""
    return stable_seed("entropy_select", seed, global_step)


def _mean(x: torch.Tensor) -> float:
    return float(x.float().mean()) if x.numel() else 0.0


def compute_prefix_metrics(
    *,
    response_mask: torch.Tensor,
    prefix_mask: torch.Tensor,
    keep_mask: torch.Tensor,
    entropy: torch.Tensor,
    scores: torch.Tensor,
    is_prefixed: torch.Tensor,
    prefix_ratio: torch.Tensor,
    demo_missing: torch.Tensor,
    demo_truncated: torch.Tensor,
    bounds: tuple[float, float],
) -> dict[str, float]:
    """The ``prefix_rft/`` metrics of one step (rows = real rows, padding excluded by the caller).

    Means over an empty set (e.g. no prefixed rollout in an RFT run) are logged as 0.0 so every key is
    present and finite; ``prefixed_frac`` tells whether they are meaningful.
    """
    resp = response_mask.bool()
    prefix = prefix_mask.bool() & resp
    cont = resp & ~prefix
    kept = keep_mask.bool() & prefix
    pre_rows = is_prefixed.bool()
    n_prefix = int(prefix.sum())
    metrics = {
        "ratio_low": float(bounds[0]),
        "ratio_high": float(bounds[1]),
        "ratio_mean": _mean(prefix_ratio[pre_rows]),
        "prefixed_frac": _mean(pre_rows),
        "prefix_token_frac": n_prefix / max(int(resp.sum()), 1),
        "kept_frac": int(kept.sum()) / n_prefix if n_prefix else 0.0,
        "kept_tokens": float(kept.sum()),
        "prefix_length": _mean(prefix.sum(-1)[pre_rows]),
        "continuation_length": _mean(cont.sum(-1)[pre_rows]),
        "entropy_prefix": _mean(entropy[prefix]),
        "entropy_continuation": _mean(entropy[cont]),
        "score_prefixed": _mean(scores[pre_rows]),
        "score_on_policy": _mean(scores[~pre_rows]),
        "demo_missing": float(demo_missing.sum()),
        "demo_truncated": float(demo_truncated.sum()),
    }
    return {f"prefix_rft/{k}": v for k, v in metrics.items()}


def prompt_of(key: str) -> str:
    """verl's prompt uid of a trajectory key ``"<uid>_<session>_<index>"`` (its rollout-group id)."""
    return key.split("_", 1)[0]


def compute_guidance_metrics(
    prompts: list[str], is_prefixed: torch.Tensor, prefix_ratio: torch.Tensor
) -> dict[str, float]:
    """Per-prompt guidance of one step (real rows): the share of prompts with a prefixed rollout and the
    per-prompt ratio's mean / p10 / p90, a prompt's ratio being the mean ratio of its prefixed rollouts (0 for
    a prompt without one). Logged in every mode (``schedule``: every prompt with a demo is guided)."""
    ratios: dict[str, list[float]] = {p: [] for p in prompts}
    for p, pre, ratio in zip(prompts, is_prefixed.tolist(), prefix_ratio.tolist(), strict=True):
        if pre:
            ratios[p].append(float(ratio))
    per_prompt = np.array([float(np.mean(r)) if r else 0.0 for r in ratios.values()])
    if not per_prompt.size:
        return {f"prefix_rft/{k}": 0.0 for k in PROMPT_METRIC_KEYS if k != "demo_tokens_trained"}
    return {
        "prefix_rft/guided_frac": float(np.mean([bool(r) for r in ratios.values()])),
        "prefix_rft/prompt_ratio_mean": float(per_prompt.mean()),
        "prefix_rft/prompt_ratio_p10": float(np.quantile(per_prompt, 0.1)),
        "prefix_rft/prompt_ratio_p90": float(np.quantile(per_prompt, 0.9)),
    }


def row_fields(batch: TensorDict, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Each row's ``keys`` of a dataloader batch, exactly as verl's agent-loop manager hands them to the agent
    loop (``AgentLoopWorkerTQ.generate_sequences``: a tensor's row, a stack's item, a constant's value)."""
    from tensordict import NonTensorData, NonTensorStack

    rows: list[dict[str, Any]] = [{} for _ in range(len(batch))]
    for key, value in batch.items():
        if key not in keys:
            continue
        for i, row in enumerate(rows):
            if isinstance(value, torch.Tensor):
                row[key] = value[i]
            elif isinstance(value, NonTensorStack):
                row[key] = value[i].data
            elif isinstance(value, NonTensorData):
                row[key] = value.data
    return rows


def _merge_meta(new: Any, old: Any) -> Any:
    """Keep the batch-level ``extra_info`` of ``old`` on the KVBatchMeta ``new`` returned by a put."""
    new.extra_info = {**(old.extra_info or {}), **(new.extra_info or {})}
    return new


# ----------------------------------------------------------------------------- trainer


class PrefixRFTTrainer(PPOTrainerSync):
    """verl's synchronous v1 PPO trainer with the Prefix-RFT hooks (see the module docstring)."""

    def __init__(self, config):
        super().__init__(config)
        self.prefix_cfg: PrefixRFTConfig = validate_verl_config(config)
        guidance = self.prefix_cfg.guidance
        self.guidance = GuidanceTable(guidance) if guidance.mode != "schedule" else None
        self._guided_rows: dict[str, str] = {}  # verl's prompt uid -> row id, for the rows in flight

    def _init_dataloader(self):
        """verl's dataloaders; an all-filtered training set fails naming ``data.max_prompt_length``."""
        try:
            super()._init_dataloader()
        except Exception:
            dataset = getattr(self, "train_dataset", None)
            if dataset is not None:
                check_training_rows(len(dataset), self.config)
            raise
        check_training_rows(len(self.train_dataset), self.config)

    # -- (e) the actor loss ------------------------------------------------------------------------

    def _setup(self):
        super()._setup()
        self.actor_rollout_wg.set_loss_fn(self.build_actor_loss_fn())
        logger.info("Prefix-RFT actor loss installed on the actor workers")

    def build_actor_loss_fn(self):
        """``partial(prefix_rft_ppo_loss, config=<ActorConfig>, prefix_config=<PrefixRFTConfig>)``.

        Same call shape as verl's ``partial(ppo_loss, config=actor_config)`` (``ActorRolloutRefWorker.init_model``);
        the ``ActorConfig`` is built from the same yaml node the workers build theirs from (same function) and
        the validated ``prefix_rft`` block is bound into the partial (pickled to every worker with it).
        """
        from verl.utils.config import omega_conf_to_dataclass

        from prefix_rft.actor_loss import make_prefix_rft_loss_fn

        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        return make_prefix_rft_loss_fn(actor_config, self.prefix_cfg)

    # -- shared TQ access --------------------------------------------------------------------------

    def _require_fields(self, batch, names) -> None:
        present = set(batch.fields or [])
        missing = [n for n in names if n not in present]
        if batch.fields is not None and missing:
            raise RuntimeError(
                f"TransferQueue rows carry no {missing}: the rollout did not run the prefix_rft_agent loop. "
                "Set actor_rollout_ref.rollout.agent.default_agent_loop=prefix_rft_agent and "
                "actor_rollout_ref.model.external_lib=prefix_rft.plugin (the recipe yaml does both)."
            )

    def _actor_dp_size(self) -> int:
        # Same lookup as verl.trainer.ppo.v1.trainer_base.PPOTrainer._balance_batch.
        wg = self.actor_rollout_wg
        if "actor" not in wg._dispatch_info:
            wg._dispatch_info["actor"] = wg._query_dispatch_info("actor")
        return max(wg._dispatch_info["actor"]) + 1

    # -- (c) rollout correction neutral on demo tokens ----------------------------------------------

    def _compute_old_log_prob(self, batch, metrics: dict):
        batch = super()._compute_old_log_prob(batch, metrics)
        return self._neutralise_rollout_log_probs(batch, metrics)

    def _neutralise_rollout_log_probs(self, batch, metrics: dict):
        """``rollout_log_probs := old_log_probs`` on demo-prefix tokens (TQ), debug metrics recomputed."""
        if batch.fields is not None and "rollout_log_probs" not in batch.fields:
            return batch
        self._require_fields(batch, [TOKEN_FIELD])
        data = tq.kv_batch_get(
            keys=batch.keys,
            partition_id=batch.partition_id,
            select_fields=["responses", "response_mask", TOKEN_FIELD, "old_log_probs", "rollout_log_probs"],
        )
        response_mask = as_nested(data["response_mask"])
        width = to_padded(response_mask).shape[1]
        resp = to_padded(response_mask, width)
        prefix = to_padded(data[TOKEN_FIELD], width).bool() & resp.bool()
        old = to_padded(data["old_log_probs"], width)
        rollout = to_padded(data["rollout_log_probs"], width)
        patched = torch.where(prefix, old, rollout)
        put = TensorDict(
            {"rollout_log_probs": response_to_nested(patched, response_mask)}, batch_size=len(batch)
        )
        new = tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=put)
        if self.config.actor_rollout_ref.rollout.calculate_log_probs:
            # verl logged rollout-vs-actor diffs with the demo tokens' placeholder log-prob; redo them.
            metrics.update(
                calculate_debug_metrics(
                    DataProto(
                        batch=TensorDict(
                            {
                                "rollout_log_probs": patched,
                                "old_log_probs": old,
                                "response_mask": resp,
                                "responses": to_padded(data["responses"], width),
                            },
                            batch_size=len(batch),
                        )
                    )
                )
            )
        return _merge_meta(new, batch)

    # -- (a) advantage, (b) keep-mask, (d) metrics -------------------------------------------------

    def _compute_advantage(self, batch, metrics: dict):
        self._require_fields(batch, [TOKEN_FIELD, *ROW_FIELDS])
        # One TransferQueue read for everything this step needs: every field exists before the advantage.
        data = tq.kv_batch_get(
            keys=batch.keys,
            partition_id=batch.partition_id,
            select_fields=["response_mask", TOKEN_FIELD, "entropy", "rm_scores", *ROW_FIELDS],
        )
        is_prefixed = to_rows(data["is_prefixed"]).long()
        prefix_len = to_rows(data["prefix_len"]).long()  # dr_grpo_prefix: the demo tokens of each row
        with prefix_rows(is_prefixed, self.prefix_cfg.advantage, prefix_len=prefix_len):
            batch = super()._compute_advantage(batch, metrics)

        response_mask = as_nested(data["response_mask"])
        width = to_padded(response_mask).shape[1]
        resp = to_padded(response_mask, width)
        prefix = to_padded(data[TOKEN_FIELD], width).long() * resp.long()  # padding rows -> 0
        entropy = to_padded(data["entropy"], width).float()

        actor = self.config.actor_rollout_ref.actor
        group_ids = actor_minibatch_group_ids(
            len(batch),
            self._actor_dp_size(),
            actor.ppo_mini_batch_size * self.config.actor_rollout_ref.rollout.n,
            shuffle=bool(actor.shuffle),
            seed=int(actor.data_loader_seed),
        )
        ranked_by = group_ids if self.prefix_cfg.entropy_clip.scope == "mini_batch" else None
        keep = build_keep_mask(
            entropy,
            prefix,
            self.prefix_cfg.entropy_clip,
            ranked_by,
            seed=selection_seed(self.prefix_cfg.seed, self.global_steps),
        )
        replay = minibatch_replay_fields(group_ids, self.global_steps)
        if ranked_by is None or not self.prefix_cfg.entropy_clip.enable:
            # nothing was ranked per mini-batch: no id for the actor to check (verl reshuffles every PPO epoch
            # with actor.shuffle=true, which only the mini_batch ranking has to forbid); the count stays, for
            # the step totals of the actor's token counts
            del replay[MINIBATCH_FIELDS[0]]
        put = TensorDict(
            {
                TOKEN_FIELD: response_to_nested(prefix, response_mask),
                KEEP_FIELD: response_to_nested(keep, response_mask),
                **replay,
            },
            batch_size=len(batch),
        )
        new = _merge_meta(
            tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=put), batch
        )

        real = torch.tensor([not tag.get("is_padding", False) for tag in batch.tags], dtype=torch.bool)
        scores = to_padded(data["rm_scores"], width).float().sum(-1)[real]
        prefix_ratio = to_rows(data["prefix_ratio"]).float()[real]
        metrics.update(
            compute_prefix_metrics(
                response_mask=resp[real],
                prefix_mask=prefix[real],
                keep_mask=keep[real],
                entropy=entropy[real],
                scores=scores,
                is_prefixed=is_prefixed[real],
                prefix_ratio=prefix_ratio,
                demo_missing=to_rows(data["demo_missing"])[real],
                demo_truncated=to_rows(data["demo_truncated"])[real],
                bounds=ratio_bounds(self.global_steps, self.prefix_cfg.ratio),
            )
        )
        loss = self.prefix_cfg.loss
        trains_demo = loss.prefix_tokens == "train" or loss.sft_coef > 0
        metrics["prefix_rft/demo_tokens_trained"] = metrics["prefix_rft/kept_tokens"] if trains_demo else 0.0
        prompts = [prompt_of(key) for key, is_real in zip(batch.keys, real.tolist(), strict=True) if is_real]
        metrics.update(compute_guidance_metrics(prompts, is_prefixed[real], prefix_ratio))
        if self.guidance is not None:
            self._update_guidance(prompts, scores, is_prefixed[real], metrics)
        return new

    # -- (f) per-prompt guidance ---------------------------------------------------------------------

    def _next_train_batch(self, num_prompts: int | None = None) -> TensorDict:
        """verl's next training batch, each row carrying its guidance decision (not in ``schedule`` mode)."""
        batch = super()._next_train_batch(num_prompts)
        if self.guidance is None:
            return batch
        low_t, _ = ratio_bounds(self.global_steps, self.prefix_cfg.ratio)
        cfg = self.prefix_cfg
        guided, ratios = [], []
        fields = row_fields(batch, ("index", "extra_info", "raw_prompt", cfg.demo_key))
        for uid, kwargs in zip(list(batch["uid"]), fields, strict=True):
            row = row_uid(kwargs)
            decision = self.guidance.decide(row, low_t)
            # a row the agent loop cannot prefix (demo_fraction, no usable demo) is not guided either
            usable = keeps_demo(row, seed=cfg.seed, fraction=cfg.demo_fraction) and extract_demos(
                kwargs.get(cfg.demo_key)
            )
            if not usable:
                decision = Decision(False)
            guided.append(int(decision.guided))
            ratios.append(-1.0 if decision.ratio is None else decision.ratio)
            self._guided_rows[str(uid)] = row
        batch[GUIDED_FIELD] = torch.tensor(guided, dtype=torch.int64)
        batch[GUIDE_RATIO_FIELD] = torch.tensor(ratios, dtype=torch.float64)
        return batch

    def _update_guidance(
        self, prompts: list[str], scores: torch.Tensor, is_prefixed: torch.Tensor, metrics: dict
    ) -> None:
        """Feed the step's scores into the table (one visit per prompt) and log the table's state."""
        on_policy: dict[str, list[float]] = {}
        hybrid: dict[str, list[float]] = {}
        for prompt, score, pre in zip(prompts, scores.tolist(), is_prefixed.tolist(), strict=True):
            on_policy.setdefault(prompt, [])
            hybrid.setdefault(prompt, [])
            (hybrid if pre else on_policy)[prompt].append(score)
        for prompt in on_policy:
            row = self._guided_rows.pop(prompt, None)
            if row is None:
                raise RuntimeError(
                    f"prompt {prompt} was scored but never went through _next_train_batch: the guidance "
                    "table cannot attribute it to a training row"
                )
            self.guidance.update(row, on_policy[prompt], hybrid[prompt])
        metrics.update({f"prefix_rft/guidance_{k}": v for k, v in self.guidance.summary().items()})

    def _save_guidance(self, folder: str) -> None:
        """Write the guidance table into the checkpoint folder (before verl's files and the completion marker,
        so the marker lists it and a failed save removes it with the rest)."""
        if self.guidance is None:
            return
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, GUIDANCE_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(self.guidance.state_dict(), f)
        os.replace(path + ".tmp", path)

    def _load_guidance(self) -> None:
        """The guidance table saved with the checkpoint verl just resumed from (``self.global_steps``)."""
        if self.guidance is None or self.global_steps == 0:
            return
        trainer = self.config.trainer
        if trainer.resume_mode == "resume_path":
            folder = str(trainer.resume_from_path)
        else:
            folder = os.path.join(trainer.default_local_dir, f"global_step_{self.global_steps}")
        path = os.path.join(os.path.abspath(folder), GUIDANCE_FILE)
        if not os.path.exists(path):
            logger.warning(
                f"resumed from {folder} without a guidance table ({GUIDANCE_FILE}; the checkpoint was written "
                f"with prefix_rft.guidance.mode=schedule or by an older version): every prompt starts unseen"
            )
            return
        with open(path) as f:
            state = json.load(f)
        if state.get("mode") != self.guidance.cfg.mode:
            logger.warning(
                f"{path} was saved with prefix_rft.guidance.mode={state.get('mode')} and this run uses "
                f"{self.guidance.cfg.mode}: the success rates carry over, ratios start at init_ratio where absent"
            )
        self.guidance.load_state_dict(state)
        logger.info(f"guidance table restored from {path}: {len(self.guidance)} prompts")

    # ===================================================================================================
    # Robustness hooks: checkpoints, the metrics file across a resume, reward timeouts. Each calls super()
    # and delegates to a small module (prefix_rft/checkpoint.py, prefix_rft/metrics_file.py).
    # ===================================================================================================

    def _save_checkpoint(self):
        """verl's save, then :data:`prefix_rft.checkpoint.MARKER` written last; a failed save leaves nothing."""
        from prefix_rft.checkpoint import save_complete

        trainer = self.config.trainer
        folder = os.path.join(trainer.default_local_dir, f"global_step_{self.global_steps}")
        async_save = self.config.actor_rollout_ref.actor.get("checkpoint", {}).get("async_save", False)
        save_verl = super()._save_checkpoint

        def save() -> None:
            self._save_guidance(folder)
            save_verl()

        save_complete(folder, self.global_steps, save, write=not async_save)

    def _load_checkpoint(self):
        """Resume from the newest complete checkpoint, then restore the guidance table saved with it."""
        self._load_complete_checkpoint()
        self._load_guidance()

    def _load_complete_checkpoint(self):
        """verl's resume, from the newest complete checkpoint (:func:`prefix_rft.checkpoint.resolve_resume`)."""
        from omegaconf import open_dict

        from prefix_rft.checkpoint import check_resume_path, checkpoint_root, resolve_resume

        trainer = self.config.trainer
        if trainer.resume_mode == "resume_path" and isinstance(trainer.resume_from_path, str):
            check_resume_path(checkpoint_root(trainer.resume_from_path))
        if trainer.resume_mode != "auto":
            return super()._load_checkpoint()
        folder = resolve_resume(checkpoint_root(trainer.default_local_dir))
        if folder is None:
            return super()._load_checkpoint()
        with open_dict(trainer):  # verl loads exactly this folder; the user's settings come back after
            mode, path = trainer.resume_mode, trainer.get("resume_from_path")
            trainer.resume_mode, trainer.resume_from_path = "resume_path", folder
        try:
            return super()._load_checkpoint()
        finally:
            with open_dict(trainer):
                trainer.resume_mode, trainer.resume_from_path = mode, path

    def fit(self, agent_loop_manager):
        """verl's loop; the metrics file keeps the steps up to the checkpoint (:mod:`prefix_rft.metrics_file`)."""
        from prefix_rft.metrics_file import file_logger_path, lines_to_keep

        self._metric_lines = []
        if "file" in (self.config.trainer.logger or []):
            path = file_logger_path(self.config.trainer.project_name, self.config.trainer.experiment_name)
            self._metric_lines = lines_to_keep(path, self.global_steps)
        return super().fit(agent_loop_manager)

    def _restore_metric_lines(self) -> None:
        from prefix_rft.metrics_file import restore_lines

        lines, self._metric_lines = getattr(self, "_metric_lines", []), []
        file_logger = getattr(getattr(self, "logger", None), "logger", {}).get("file")
        if file_logger is not None:
            restore_lines(file_logger, lines)

    def on_validate_begin(self):
        self._restore_metric_lines()  # the first hook after fit() creates verl's loggers
        return super().on_validate_begin()

    def on_train_begin(self):
        self._restore_metric_lines()
        return super().on_train_begin()

    def _balance_batch(self, batch, metrics, *args, **kwargs):
        """verl's balancing; first ``prefix_rft/reward_timeouts``: answers whose check overran its bound."""
        metrics[REWARD_TIMEOUTS_METRIC] = self._count_reward_timeouts(batch)
        return super()._balance_batch(batch, metrics, *args, **kwargs)

    def _count_reward_timeouts(self, batch) -> float:
        fields = set(batch.fields or [])
        name = "timeout" if "timeout" in fields else "extra_fields" if "extra_fields" in fields else None
        if name is None:
            return 0.0
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[name])
        values = data[name]
        values = values.tolist() if hasattr(values, "tolist") else list(values)
        real = [not tag.get("is_padding", False) for tag in batch.tags]
        return count_reward_timeouts(values, real)


def count_reward_timeouts(values: list, real: list[bool] | None = None) -> float:
    """Sum of the reward's ``timeout`` flags over real rows: per-row ``extra_fields`` dicts (whose
    ``reward_extra_info`` holds what :func:`prefix_rft.reward.compute_score` returned) or the flags themselves.
    """
    total = 0.0
    for i, value in enumerate(values):
        if real is not None and not real[i]:
            continue
        if isinstance(value, dict):
            value = (value.get("reward_extra_info") or {}).get("timeout", 0)
        try:
            total += float(value or 0)
        except (TypeError, ValueError):
            continue
    return total


# ----------------------------------------------------------------------------- task runner


class PrefixRFTTaskRunner:
    """What verl's ``verl.trainer.main_ppo.TaskRunnerV1`` does, building our trainer.

    verl's runner is already a Ray actor class (it cannot be subclassed), so this plain class mirrors its
    two methods; wrap it with ``ray.remote`` and hand it to ``verl.trainer.main_ppo.run_ppo``.
    """

    def __init__(self):
        self.config = None
        self.trainer = None
        self.agent_loop_manager = None

    def init_agent_loop_manager(self):
        """verl's TransferQueue agent-loop manager (or ``rollout.agent.agent_loop_manager_class``)."""
        from verl.trainer.ppo.v1 import AgentLoopManagerTQ
        from verl.utils.import_utils import load_class_from_fqn

        fqn = self.config.actor_rollout_ref.rollout.get("agent", {}).get("agent_loop_manager_class")
        manager_cls = load_class_from_fqn(fqn, "AgentLoopManager") if fqn else AgentLoopManagerTQ
        self.agent_loop_manager = manager_cls.create(
            config=self.config,
            llm_client=self.trainer.get_llm_client(),
            teacher_client=self.trainer.get_teacher_client(),
            reward_loop_worker_handles=self.trainer.get_reward_handles(),
        )

    def run(self, config):
        """Init TransferQueue, build :class:`PrefixRFTTrainer`, fit; always close TQ and the logger."""
        from pprint import pprint

        from omegaconf import OmegaConf
        from verl.utils.logging_utils import configure_verl_logging

        configure_verl_logging()
        config.transfer_queue.enable = True
        pprint(OmegaConf.to_container(config, resolve=True))
        OmegaConf.resolve(config)
        self.config = config
        tq.init(config.transfer_queue)
        succeeded = False
        try:
            self.trainer = PrefixRFTTrainer(config=config)
            self.trainer.init()
            self.init_agent_loop_manager()
            self.trainer.fit(self.agent_loop_manager)
            succeeded = True
        finally:
            try:
                tracking = getattr(self.trainer, "logger", None)
                if tracking is not None:
                    tracking.finish(exit_code=0 if succeeded else 1)
            finally:
                tq.close()


def run_prefix_rft(config) -> None:
    """Validate the config and train with verl's ``run_ppo`` (Ray init included) and our task runner."""
    import ray
    from verl.trainer.main_ppo import run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    validate_verl_config(config)
    validate_config(
        config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
    )
    run_ppo(config, task_runner_class=ray.remote(PrefixRFTTaskRunner))


__all__ = [
    "PrefixRFTTaskRunner",
    "run_prefix_rft",
    "ESTIMATOR_NAME",
    "KEEP_FIELD",
    "METRIC_KEYS",
    "PrefixRFTTrainer",
    "actor_minibatch_group_ids",
    "build_keep_mask",
    "selection_seed",
    "compute_prefix_metrics",
    "compute_guidance_metrics",
    "GUIDANCE_FILE",
    "PROMPT_METRIC_KEYS",
]
