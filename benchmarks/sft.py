"""Run verl's own SFT trainer on CPU, then convert its checkpoint to a Hugging Face model with verl's merger.

The SFT baseline (and the SFT half of SFT->RL) is verl 0.9.1's engine-based trainer ``verl.trainer.sft_trainer``
(``SFTTrainer`` over ``verl.workers.engine_workers.TrainingWorker``, loss ``verl.workers.utils.losses.sft_loss``),
launched with ``torchrun`` as verl documents it. Its loss is the masked sum of the demo-token NLL divided by
the number of loss tokens of the *whole* global batch (``batch_num_tokens``, times ``dp_size``), so every
demonstration token weighs the same however the batch is split into micro-batches or ranks. (verl 0.9.1
ships no other SFT entry for FSDP: the older ``fsdp_sft_trainer.py`` is gone; ``sft_trainer_ray.py`` is the
same trainer behind Ray.)

On CPU it runs through verl's own hooks only, the same ones as the RL path (docs/CPU.md):
``VERL_PLATFORM=cpu`` + ``VERL_USE_EXTERNAL_MODULES=verl_cpu.plugin`` (the CPU platform, verl's FSDP
engine registered for device ``cpu``, the one existing gloo backend-string patch of
``verl_cpu.patches``), plus :data:`SFT_CPU_OVERRIDES`. No SFT-specific patch is needed.

The checkpoint (``global_step_N/model_world_size_1_rank_0.pt`` + a ``huggingface/`` dir holding only the
config and tokenizer, since verl's SFT ``checkpoint.save_contents`` defaults to model/optimizer/extra) is
converted with ``python -m verl.model_merger merge --backend fsdp``; the merged model is written in
bfloat16 (``verl.model_merger.base_model_merger.BaseModelMerger.save_hf_model_and_tokenizer``).

Used by the CPU learning benchmark and ``tests/test_sft_cpu.py``::

    from benchmarks.sft import run_sft
    res = run_sft("data/sft_train.parquet", "outputs/base", "outputs/sft_s0", steps=20, batch_size=16, lr=1e-3)
    res.hf_model_dir  # -> actor_rollout_ref.model.path=... of the RL run
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.launch import cpu_env, launch_slot, log_tail, read_metrics

SFT_MODULE = "verl.trainer.sft_trainer"
MERGER_MODULE = "verl.model_merger"

#: Hardware overrides of verl's SFT trainer config (``sft_trainer_engine.yaml``) on CPU; the same reasons as
#: :data:`benchmarks.launch.CPU_OVERRIDES` (docs/CPU.md).
SFT_CPU_OVERRIDES = [
    "trainer.device=cpu",
    "trainer.nnodes=1",
    "trainer.n_gpus_per_node=1",
    # verl defaults to flash_attention_2; rmpad relies on flash-attn varlen to keep packed rows apart
    "+model.override_config.attn_implementation=sdpa",
    "model.use_remove_padding=False",
    "model.enable_gradient_checkpointing=False",
    "engine.strategy=fsdp2",
    "engine.use_torch_compile=False",
    "data.num_workers=0",
]


class SftError(RuntimeError):
    """verl's SFT trainer or model merger failed; the message carries the command's log tail."""


@dataclass
class SftResult:
    """Outcome of :func:`run_sft`."""

    returncode: int
    hf_model_dir: str = ""
    metrics: dict[int, dict] = field(default_factory=dict)
    log_file: str = ""
    wall_s: float = 0.0
    ckpt_dir: str = ""
    steps: int = 0
    sft_wall_s: float = 0.0
    merge_wall_s: float = 0.0

    def log_tail(self, n: int = 60) -> str:
        """The last ``n`` lines of the log (trainer, then merger)."""
        return log_tail(self.log_file, n)


def count_parquet_rows(path: str | os.PathLike) -> int:
    """Number of rows of a parquet file (metadata only)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(str(path)).metadata.num_rows


def shuffled_copy(train_parquet: str | os.PathLike, out_path: str | os.PathLike, seed: int) -> str:
    """``train_parquet`` with its rows permuted by ``seed``.

    verl's SFT trainer samples with ``torch.utils.data.DistributedSampler(shuffle=True)`` at its default seed
    (0), which no config key reaches: the row order of the file is the only thing a seed can change.
    """
    import pandas as pd

    df = pd.read_parquet(train_parquet)
    order = list(range(len(df)))
    random.Random(seed).shuffle(order)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    df.iloc[order].reset_index(drop=True).to_parquet(out_path, index=False)
    return str(out_path)


def sft_overrides(
    train_parquet: str,
    model_path: str,
    ckpt_dir: str,
    *,
    total_steps: int,
    epochs: int,
    batch_size: int,
    micro_batch_size: int,
    lr: float,
    seed: int,
    max_length: int,
    val_parquet: str | None = None,
    experiment_name: str = "sft",
) -> list[str]:
    """Overrides of verl's SFT trainer for a run of ``total_steps`` optimizer steps (on top of
    :data:`SFT_CPU_OVERRIDES`). One checkpoint, at the last step; no resume."""
    return [
        f"model.path={model_path}",
        f"data.train_files={train_parquet}",
        f"data.val_files={val_parquet if val_parquet else 'null'}",
        "data.messages_key=messages",
        f"data.train_batch_size={batch_size}",
        f"data.micro_batch_size_per_gpu={micro_batch_size}",
        "data.use_dynamic_bsz=False",
        f"data.max_length={max_length}",
        "data.truncation=error",
        f"optim.lr={lr}",
        f"engine.seed={seed}",
        f"trainer.seed={seed}",
        f"trainer.total_training_steps={total_steps}",
        f"trainer.total_epochs={epochs}",
        "trainer.save_freq=-1",
        "trainer.test_freq=-1",
        "trainer.resume_mode=disable",
        f"trainer.default_local_dir={ckpt_dir}",
        "trainer.logger=[console,file]",
        "trainer.project_name=prefix_rft_cpu_sft",
        f"trainer.experiment_name={experiment_name}",
    ]


def _run_logged(cmd: list[str], *, log, cwd: str, env: dict, timeout_s: float | None) -> int:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.write(f"\n[benchmarks.sft] timed out after {timeout_s:.0f} s\n")
        return 124
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    return proc.returncode


def run_sft(
    train_parquet: str | os.PathLike,
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 4,
    micro_batch_size: int | None = None,
    lr: float = 1e-3,
    seed: int = 0,
    max_length: int = 256,
    timeout_s: float | None = 600,
    val_parquet: str | os.PathLike | None = None,
    extra_overrides: Sequence[str] = (),
    env: dict[str, str] | None = None,
    raise_on_error: bool = True,
    tag: str = "sft",
) -> SftResult:
    """Train ``model_path`` on the SFT parquet ``train_parquet`` (column ``messages``, see
    :mod:`prefix_rft.data.sft`) with verl's SFT trainer on CPU, then merge the checkpoint to ``out_dir/hf``.

    Give ``steps`` (optimizer steps of ``batch_size`` rows; epochs are added as needed) or ``epochs``
    (default 1). ``seed`` permutes the rows (:func:`shuffled_copy`) and seeds the engine. Everything goes
    under ``out_dir``: ``<tag>.log`` (trainer then merger console), ``<tag>.metrics.jsonl`` (verl's file
    logger: ``train/loss``, ``train/grad_norm``, ``train/lr`` per step), ``ckpt/global_step_N`` and ``hf/``.
    ``timeout_s`` bounds the trainer and the merger each. On failure raises :class:`SftError` with the log
    tail (or, with ``raise_on_error=False``, returns the result with the non-zero ``returncode``).
    """
    start = time.monotonic()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    train_parquet, model_path = Path(train_parquet).resolve(), Path(model_path).resolve()
    for what, p in (("train_parquet", train_parquet), ("model_path", model_path)):
        if not p.exists():
            raise FileNotFoundError(f"run_sft: {what} {p} does not exist")
    if steps is not None and epochs is not None:
        raise ValueError("run_sft: give steps or epochs, not both")
    n_rows = count_parquet_rows(train_parquet)
    if batch_size < 1 or batch_size > n_rows:
        raise ValueError(
            f"run_sft: batch_size={batch_size} must be in [1, {n_rows}] ({train_parquet} has {n_rows} rows; "
            f"verl's SFT dataloader drops the last incomplete batch)"
        )
    steps_per_epoch = n_rows // batch_size
    if steps is not None:
        if steps < 1:
            raise ValueError(f"run_sft: steps must be >= 1, got {steps}")
        total_steps, n_epochs = steps, math.ceil(steps / steps_per_epoch)
    else:
        n_epochs = 1 if epochs is None else epochs
        if n_epochs < 1:
            raise ValueError(f"run_sft: epochs must be >= 1, got {n_epochs}")
        total_steps = steps_per_epoch * n_epochs
    micro = batch_size if micro_batch_size is None else micro_batch_size
    if batch_size % micro:
        raise ValueError(f"run_sft: micro_batch_size={micro} must divide batch_size={batch_size}")

    data = shuffled_copy(train_parquet, out / "data" / f"sft_train_seed{seed}.parquet", seed)
    ckpt = out / "ckpt"
    hf_dir = out / "hf"
    log_file = out / f"{tag}.log"
    metrics_file = out / f"{tag}.metrics.jsonl"
    metrics_file.unlink(missing_ok=True)
    run_env = cpu_env(env)
    run_env["VERL_FILE_LOGGER_PATH"] = str(metrics_file)
    overrides = sft_overrides(
        data,
        str(model_path),
        str(ckpt),
        total_steps=total_steps,
        epochs=n_epochs,
        batch_size=batch_size,
        micro_batch_size=micro,
        lr=lr,
        seed=seed,
        max_length=max_length,
        val_parquet=str(Path(val_parquet).resolve()) if val_parquet else None,
        experiment_name=tag,
    )
    train_cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=1",
        "-m", SFT_MODULE, *SFT_CPU_OVERRIDES, *overrides, *extra_overrides,
    ]  # fmt: skip
    step_dir = ckpt / f"global_step_{total_steps}"
    merge_cmd = [
        sys.executable, "-m", MERGER_MODULE, "merge", "--backend", "fsdp",
        "--local_dir", str(step_dir), "--target_dir", str(hf_dir),
    ]  # fmt: skip
    result = SftResult(returncode=0, log_file=str(log_file), ckpt_dir=str(step_dir), steps=total_steps)
    stage = "SFT trainer"
    with open(log_file, "w") as log:
        with launch_slot():  # one of make test's trainer slots (benchmarks.launch.LAUNCH_SLOTS_ENV)
            t0 = time.monotonic()
            rc = _run_logged(train_cmd, log=log, cwd=str(out), env=run_env, timeout_s=timeout_s)
        result.sft_wall_s = time.monotonic() - t0
        if rc == 0 and not (step_dir / "model_world_size_1_rank_0.pt").exists():
            log.write(f"\n[benchmarks.sft] the trainer exited 0 but wrote no checkpoint at {step_dir}\n")
            rc = 1
        if rc == 0:
            stage = "model merger"
            t0 = time.monotonic()
            rc = _run_logged(merge_cmd, log=log, cwd=str(out), env=run_env, timeout_s=timeout_s)
            result.merge_wall_s = time.monotonic() - t0
            if rc == 0:
                result.hf_model_dir = str(hf_dir)
    result.returncode = rc
    result.metrics = read_metrics(metrics_file)
    result.wall_s = time.monotonic() - start
    if rc != 0 and raise_on_error:
        raise SftError(
            f"verl's {stage} failed (exit {rc}); full log {log_file}. Last lines:\n{result.log_tail()}"
        )
    return result
