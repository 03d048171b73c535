"""GPU smoke test: 3 Prefix-RFT steps of a small model with vLLM + FSDP, then PASS/FAIL per integration point.

Run by ``scripts/gpu_smoke.sh MODEL_DIR`` (one GPU, a few minutes for a 0.5B model)::

    python -m benchmarks.smoke run MODEL_DIR [--out DIR] [--steps 3] [--cfg-job]
    python -m benchmarks.smoke evaluate --metrics DIR/train.metrics.jsonl [--log DIR/train.log] ...

``run`` writes synthetic arithmetic data with demonstrations (:mod:`benchmarks.fixtures.tiny`), trains through
``recipe/prefix_rft/main_prefix_rft.py`` with verl's file logger (one JSON line per step), saves the actor at
the last step, then evaluates. ``evaluate`` reads a recorded metrics file and prints one line per check:

- ``steps completed``: the run logged every training step;
- ``demo tokens present``: every step has hybrid rollouts with spliced demo tokens and no missing demo;
- ``kept fraction = top_ratio``: entropy clipping kept ``ceil(top_ratio * N_g)`` demo tokens per ranking group;
- ``actor weights changed``: the saved actor differs from the initial model (or, without a checkpoint, every
  step has a finite non-zero ``actor/grad_norm``);
- ``hybrids decode fewer tokens``: tokens decoded per hybrid rollout < per on-policy rollout (a demo prefix
  is prefilled, not decoded);
- ``no failed rollouts``: no ``training/rollout_failure/evicted_samples`` and no failed prompt group in the log;
- ``metrics finite``: every numeric metric of every step is finite.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.e2e import decode_stats
from benchmarks.launch import RECIPE_MAIN, REPO_ROOT, read_metrics

#: trainer-side metrics the checks read (each is in :data:`prefix_rft.trainer.METRIC_KEYS`)
REQUIRED_PREFIX_METRICS = (
    "prefixed_frac",
    "prefix_token_frac",
    "prefix_length",
    "kept_frac",
    "kept_tokens",
    "continuation_length",
    "demo_missing",
)
FAILURE_METRIC = "training/rollout_failure/evicted_samples"
FAILURE_LOG_LINE = "Error in _run_prompt"  # verl's agent loop logs this when a prompt group fails


@dataclass
class Check:
    """One integration point: its name, the verdict and the numbers behind it."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name:<28} {self.detail}"


def _train_steps(metrics: dict[int, dict]) -> list[int]:
    return sorted(s for s, m in metrics.items() if "timing_s/step" in m)


def evaluate(
    metrics: dict[int, dict],
    *,
    steps: int,
    rows: int,
    top_ratio: float,
    groups: int,
    log_text: str | None = None,
    weight_change: float | None = None,
) -> list[Check]:
    """The PASS/FAIL checks over per-step ``metrics`` (as :func:`benchmarks.launch.read_metrics` returns).

    ``rows`` is the number of rollouts per step (``train_batch_size * rollout.n``), ``groups`` the number of
    entropy-ranking groups per step (PPO mini-batches, for ``scope=mini_batch``); ``weight_change`` the max
    absolute difference between the saved actor and the initial model (:func:`max_weight_change`).
    """
    done = _train_steps(metrics)
    checks = [Check("steps completed", len(done) == steps, f"{len(done)} of {steps} training steps logged")]
    per_step = [metrics[s] for s in done]

    def p(m: dict, key: str) -> float:
        return float(m.get(f"prefix_rft/{key}", float("nan")))

    missing = sorted({k for m in per_step for k in REQUIRED_PREFIX_METRICS if f"prefix_rft/{k}" not in m})
    if missing:
        detail = f"metrics missing: {['prefix_rft/' + k for k in missing]}"
        return checks + [Check("prefix_rft metrics logged", False, detail)]

    demo_ok = bool(per_step) and all(
        p(m, "prefixed_frac") > 0
        and p(m, "prefix_token_frac") > 0
        and p(m, "prefix_length") > 0
        and p(m, "demo_missing") == 0
        for m in per_step
    )
    checks.append(
        Check(
            "demo tokens present",
            demo_ok,
            "prefix_token_frac per step "
            + ", ".join(f"{p(m, 'prefix_token_frac'):.3f}" for m in per_step)
            + f"; demo_missing {sum(p(m, 'demo_missing') for m in per_step):.0f}",
        )
    )

    kept_details, kept_ok = [], bool(per_step)
    for s, m in zip(done, per_step, strict=True):
        kept, frac = p(m, "kept_tokens"), p(m, "kept_frac")
        if not (frac > 0 and math.isfinite(kept)):
            kept_ok = False
            kept_details.append(f"step {s}: kept_frac {frac}")
            continue
        # demo tokens in the batch, counted independently of the keep-mask: demo share x response tokens
        resp = float(m.get("response_length/mean", float("nan")))
        total = round(p(m, "prefix_token_frac") * resp * rows) if math.isfinite(resp) else round(kept / frac)
        ok = math.ceil(top_ratio * total - 1e-9) <= kept <= top_ratio * total + groups
        ok &= abs(kept / frac - total) <= 0.5 + 1e-6 * total  # kept_frac is kept / the same total
        kept_ok &= ok
        kept_details.append(f"step {s}: {kept:.0f}/{total}")
    checks.append(
        Check(
            "kept fraction = top_ratio",
            kept_ok,
            f"top_ratio {top_ratio}, {groups} group(s): " + "; ".join(kept_details),
        )
    )

    if weight_change is not None:
        checks.append(
            Check(
                "actor weights changed",
                weight_change > 0,
                f"max |saved - initial| = {weight_change:.3g}",
            )
        )
    else:
        norms = [float(m.get("actor/grad_norm", float("nan"))) for m in per_step]
        checks.append(
            Check(
                "actor weights changed",
                bool(norms) and all(math.isfinite(g) and g > 0 for g in norms),
                f"no checkpoint compared; actor/grad_norm per step {norms}",
            )
        )

    stats = [decode_stats(m, rows) for m in per_step]
    pref = [st["per_prefixed"] for st in stats]
    onp = [st["per_on_policy"] for st in stats]
    mean_pref = sum(pref) / len(pref) if pref else float("nan")
    mean_onp = sum(onp) / len(onp) if onp else float("nan")
    checks.append(
        Check(
            "hybrids decode fewer tokens",
            mean_pref < mean_onp,
            f"decoded per hybrid {mean_pref:.1f} vs per on-policy rollout {mean_onp:.1f}",
        )
    )

    evicted = sum(float(m.get(FAILURE_METRIC, 0)) for m in metrics.values())
    log_failures = log_text.count(FAILURE_LOG_LINE) if log_text is not None else 0
    checks.append(
        Check(
            "no failed rollouts",
            evicted == 0 and log_failures == 0,
            f"{FAILURE_METRIC} total {evicted:.0f}; {log_failures} '{FAILURE_LOG_LINE}' in the log"
            + ("" if log_text is not None else " (no log given)"),
        )
    )

    bad = sorted(
        f"step {s}: {k}={v}"
        for s, m in metrics.items()
        for k, v in m.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v)
    )
    checks.append(Check("metrics finite", not bad, "; ".join(bad[:5]) if bad else "all finite"))
    return checks


def max_weight_change(model_dir: str | os.PathLike, step_dir: str | os.PathLike) -> float:
    """Max absolute difference between the initial model's safetensors and the actor saved in ``step_dir``
    (verl's FSDP checkpoint, ``<step_dir>/actor/model_world_size_<W>_rank_0.pt``), over the parameters both
    hold with the same shape. Raises ``FileNotFoundError`` / ``ValueError`` naming what is missing."""
    import torch
    from safetensors.torch import load_file

    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors to compare the saved actor with")
    shards = sorted(glob.glob(os.path.join(step_dir, "actor", "model_world_size_*_rank_0.pt")))
    if not shards:
        raise FileNotFoundError(f"{step_dir}/actor: no model_world_size_*_rank_0.pt (did the run save?)")
    init = {}
    for f in files:
        init.update(load_file(f))
    saved = torch.load(shards[0], map_location="cpu", weights_only=False)
    diffs = []
    for name, value in saved.items():
        value = value.to_local() if hasattr(value, "to_local") else value
        if name in init and tuple(init[name].shape) == tuple(value.shape):
            diffs.append((value.detach().float() - init[name].float()).abs().max().item())
    if not diffs:
        raise ValueError(f"{shards[0]} and {model_dir} share no parameter of the same name and shape")
    return max(diffs)


# ----------------------------------------------------------------------------- the run


def smoke_overrides(
    model: str,
    train: str,
    val: str,
    out: Path,
    *,
    steps: int,
    batch: int,
    n: int,
    mini_batch: int,
    gpu_mem: float,
) -> list[str]:
    """Hydra overrides sizing the recipe for one GPU and a small model (everything else is the recipe's)."""
    return [
        f"data.train_files={train}",
        f"data.val_files={val}",
        f"data.train_batch_size={batch}",
        "data.max_prompt_length=256",
        "data.max_response_length=256",
        f"actor_rollout_ref.model.path={model}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={mini_batch}",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=8192",
        "actor_rollout_ref.actor.checkpoint.save_contents=[model]",
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        f"actor_rollout_ref.rollout.gpu_memory_utilization={gpu_mem}",
        f"actor_rollout_ref.rollout.n={n}",
        f"prefix_rft.ratio.decay_steps={steps}",
        "trainer.nnodes=1",
        "trainer.n_gpus_per_node=1",
        f"trainer.total_training_steps={steps}",
        f"trainer.save_freq={steps}",
        "trainer.test_freq=-1",
        "trainer.val_before_train=False",
        "trainer.resume_mode=disable",
        f"trainer.default_local_dir={out / 'ckpt'}",
        "trainer.logger=[console,file]",
        "trainer.project_name=prefix_rft_smoke",
        "trainer.experiment_name=gpu_smoke",
    ]


def _check_model_dir(model: str) -> str | None:
    p = Path(model)
    if not p.is_dir():
        return (
            f"model {model!r} is not a directory: pass a local copy of a small HF model, e.g. "
            "`huggingface-cli download Qwen/Qwen2.5-0.5B-Instruct --local-dir ~/models/Qwen2.5-0.5B-Instruct`"
        )
    if not (p / "config.json").is_file():
        return f"model {model!r} has no config.json: pass the folder of a Hugging Face model"
    if not glob.glob(str(p / "*.safetensors")):
        return f"model {model!r} has no *.safetensors (the weight check compares the saved actor with them)"
    return None


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.smoke", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="train a few Prefix-RFT steps on one GPU, then evaluate")
    run.add_argument("model", help="local folder of a small HF model (e.g. Qwen2.5-0.5B-Instruct)")
    run.add_argument("--out", default=None, help="output folder (default: gpu_smoke_<time>; must be empty)")
    run.add_argument("--steps", type=int, default=3)
    run.add_argument("--batch", type=int, default=8, help="prompts per step")
    run.add_argument("--n", type=int, default=4, help="rollouts per prompt (1 of them hybrid)")
    run.add_argument("--mini-batch", type=int, default=4, help="prompts per PPO mini-batch")
    run.add_argument("--gpu-mem", type=float, default=0.4, help="vLLM gpu_memory_utilization")
    run.add_argument("--timeout-s", type=float, default=540.0, help="stop the training after this long")
    run.add_argument("--cfg-job", action="store_true", help="print the composed config only (no GPU needed)")
    ev = sub.add_parser("evaluate", help="PASS/FAIL checks over a recorded metrics file")
    ev.add_argument("--metrics", required=True, help="verl file-logger jsonl")
    ev.add_argument("--log", default=None, help="the run's console log (failed prompt groups are logged)")
    ev.add_argument("--steps", type=int, default=3)
    ev.add_argument("--rows", type=int, default=32, help="rollouts per step (train_batch_size x rollout.n)")
    ev.add_argument("--top-ratio", type=float, default=0.2)
    ev.add_argument(
        "--groups", type=int, default=2, help="entropy-ranking groups per step (PPO mini-batches)"
    )
    ev.add_argument("--model", default=None, help="initial model folder (with --step-dir: compare weights)")
    ev.add_argument("--step-dir", default=None, help="checkpoint folder global_step_N of the run")
    return ap


def _validate(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")
    if args.cmd == "run":
        if args.n < 2:
            ap.error(f"--n must be >= 2 (one hybrid and at least one on-policy rollout), got {args.n}")
        if args.mini_batch < 1 or args.batch % args.mini_batch:
            ap.error(f"--batch {args.batch} must be a multiple of --mini-batch {args.mini_batch}")
        if not 0 < args.gpu_mem < 1:
            ap.error(f"--gpu-mem must be in (0, 1), got {args.gpu_mem}")
        problem = _check_model_dir(args.model)
        if problem:
            ap.error(problem)
        if args.out is not None and Path(args.out).exists() and any(Path(args.out).iterdir()):
            ap.error(
                f"--out {args.out} is not empty: pass a new folder (a previous run's files would mix in)"
            )
    else:
        if not Path(args.metrics).is_file():
            ap.error(f"--metrics {args.metrics}: no such file")
        if args.log is not None and not Path(args.log).is_file():
            ap.error(f"--log {args.log}: no such file")
        if (args.model is None) != (args.step_dir is None):
            ap.error("--model and --step-dir go together (the weight check compares the two)")
        if args.rows < 2 or args.groups < 1 or not 0 < args.top_ratio <= 1:
            ap.error(
                f"need --rows >= 2, --groups >= 1, 0 < --top-ratio <= 1 (got {args.rows}, {args.groups}, {args.top_ratio})"
            )


def report(checks: list[Check]) -> int:
    """Print the checks; 0 when all pass."""
    for c in checks:
        print(c.line())
    failed = [c.name for c in checks if not c.ok]
    print(f"gpu_smoke: {'PASS' if not failed else 'FAIL'} ({len(checks) - len(failed)}/{len(checks)} checks)")
    return 1 if failed else 0


def _run(args: argparse.Namespace) -> int:
    from benchmarks.fixtures.tiny import synthetic_math_rows, write_parquet

    out = Path(args.out or f"gpu_smoke_{time.strftime('%Y%m%d_%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    n_train = args.batch * (args.steps + 1)
    train = write_parquet(
        synthetic_math_rows(n_train, seed=0, split="train"), str(out / "data" / "train.parquet")
    )
    val = write_parquet(synthetic_math_rows(8, seed=0, split="test"), str(out / "data" / "val.parquet"))
    overrides = smoke_overrides(
        str(Path(args.model).resolve()),
        train,
        val,
        out,
        steps=args.steps,
        batch=args.batch,
        n=args.n,
        mini_batch=args.mini_batch,
        gpu_mem=args.gpu_mem,
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    metrics_file, log_file = out / "train.metrics.jsonl", out / "train.log"
    env["VERL_FILE_LOGGER_PATH"] = str(metrics_file)
    cmd = [sys.executable, str(RECIPE_MAIN), *overrides]
    if args.cfg_job:
        return subprocess.run([*cmd, "--cfg", "job"], env=env, cwd=out).returncode
    print("$ " + " ".join(cmd), flush=True)
    start = time.monotonic()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(
            cmd, env=env, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                sys.stdout.write(line)
                if time.monotonic() - start > args.timeout_s:
                    print(
                        f"gpu_smoke: training ran past --timeout-s {args.timeout_s:.0f}; stopping it",
                        flush=True,
                    )
                    proc.terminate()
                    break
        finally:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    wall = time.monotonic() - start
    print(f"\ngpu_smoke: training exited with rc {proc.returncode} after {wall:.0f} s; log {log_file}")
    step_dir = out / "ckpt" / f"global_step_{args.steps}"
    try:
        change: float | None = max_weight_change(args.model, step_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"gpu_smoke: weight comparison unavailable: {err}")
        change = None
    checks = [Check("training exited cleanly", proc.returncode == 0, f"rc {proc.returncode}, {wall:.0f} s")]
    checks += evaluate(
        read_metrics(metrics_file),
        steps=args.steps,
        rows=args.batch * args.n,
        top_ratio=0.2,
        groups=args.batch // args.mini_batch,
        log_text=log_file.read_text(errors="replace"),
        weight_change=change,
    )
    return report(checks)


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    _validate(ap, args)
    if args.cmd == "run":
        return _run(args)
    change = max_weight_change(args.model, args.step_dir) if args.model else None
    checks = evaluate(
        read_metrics(args.metrics),
        steps=args.steps,
        rows=args.rows,
        top_ratio=args.top_ratio,
        groups=args.groups,
        log_text=Path(args.log).read_text(errors="replace") if args.log else None,
        weight_change=change,
    )
    return report(checks)


if __name__ == "__main__":
    sys.exit(main())
