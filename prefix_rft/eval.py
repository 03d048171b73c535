"""Evaluate a model or a verl checkpoint on the paper's benchmarks (arXiv 2507.01679 sec. 4-5).

    python -m prefix_rft.eval MODEL_OR_CHECKPOINT --data-dir data/eval --output results/model.json

- MODEL_OR_CHECKPOINT: a Hugging Face model directory, or a verl checkpoint (``.../global_step_N`` or its
  ``actor`` folder, FSDP or Megatron): it is merged into a Hugging Face directory first with verl's
  model merger (``verl.model_merger``), once (the merged copy is reused).
- ``--data-dir``: the output of ``python -m prefix_rft.data prepare eval`` (one parquet per benchmark and a
  ``manifest.json`` with each benchmark's samples per problem: avg@32 for AIME/AMC, pass@1 otherwise).
- Generation: vLLM when importable and a GPU is present, else ``--backend hf`` (transformers
  ``generate``, CPU-friendly for small models). Sampling: temperature 0.6, top-p 0.95, 8192 new tokens,
  the tokenizer's chat template applied to the prompt's messages.
- Scoring: :func:`prefix_rft.reward.compute_score` (math-verify on the last ``\\boxed{}``).
- Output: a JSON file (per benchmark: mean score, samples per problem, per-problem scores and
  predictions) and a Markdown table next to it (``.md``) laid out as the paper's results table, with
  the paper's numbers beside ours under ``--compare-paper``; the OOD sets (ARC-c, GPQA-diamond,
  MMLU-Pro) in a second table of the same layout.
- pass@k (``--pass-at 1,8,64,256``): the unbiased estimator of Chen et al. (2021) from the n samples
  per problem (every k <= n), stored per benchmark and shown next to avg@n in the table.
- Resumable: benchmarks already in the output JSON (same settings) are not generated again; the JSON
  is rewritten after every benchmark. pass@k of a finished benchmark is computed from its stored scores.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tqdm.auto import tqdm

from prefix_rft.reward import compute_score

PAPER_COLUMNS = ["AIME24", "AIME25", "AMC", "MATH500", "Minerva", "Olympiad"]
BENCH_TO_COLUMN = {
    "aime24": "AIME24",
    "aime25": "AIME25",
    "amc23": "AMC",
    "math500": "MATH500",
    "minerva": "Minerva",
    "olympiadbench": "Olympiad",
}
OOD_COLUMNS = {"arc_c": "ARC-c", "gpqa_diamond": "GPQA-diamond", "mmlu_pro": "MMLU-Pro"}
OOD_REFERENCE_7B: dict[str, tuple[list[float | None], float]] = {
    # Qwen2.5-Math-7B, ARC-c / GPQA-diamond / MMLU-Pro average only (per-benchmark numbers not reproduced
    # here): the verl re-run of the SFT baselines, arXiv 2604.23747
    "SFT then RL (arXiv 2604.23747, verl)": ([None, None, None], 59.9),
    "SRFT (arXiv 2604.23747)": ([None, None, None], 62.5),
}

PAPER_RESULTS_7B: dict[str, list[float]] = {
    # Qwen2.5-Math-7B, the paper's main table (arXiv 2507.01679 sec. 5): AIME24, AIME25, AMC, MATH500, Minerva, Olympiad
    "base": [11.5, 4.9, 31.3, 43.6, 7.4, 15.6],
    "SFT": [22.2, 22.3, 52.8, 82.6, 40.8, 43.7],
    "RFT": [25.1, 15.3, 62.0, 84.4, 39.3, 46.8],
    "SFT then RFT": [25.8, 23.1, 62.7, 87.2, 39.7, 50.4],
    "RL + SFT loss": [19.5, 16.4, 49.7, 80.4, 34.9, 39.4],
    "LUFFY": [29.4, 23.1, 65.6, 87.6, 37.5, 57.2],
    "ReLIFT": [28.2, 20.1, 64.9, 87.4, 33.8, 52.5],
    "Prefix-RFT": [31.8, 26.4, 68.2, 88.4, 40.3, 55.7],
}
PAPER_AVG_7B = {
    "base": 19.0,
    "SFT": 44.1,
    "RFT": 45.5,
    "SFT then RFT": 48.2,
    "RL + SFT loss": 40.1,
    "LUFFY": 50.1,
    "ReLIFT": 47.8,
    "Prefix-RFT": 51.8,
}


@dataclass
class SamplingSettings:
    """Decoding settings (paper: validation temperature 0.6, 8192 generated tokens)."""

    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 8192
    seed: int = 0


GenerateFn = Callable[[list[str], int, SamplingSettings], list[list[str]]]
"""``generate(prompts, n, settings) -> for each prompt, n completions`` (prompts are chat-templated text)."""


# ---------------------------------------------------------------------------- checkpoints


def _has_weights(d: str) -> bool:
    return os.path.exists(os.path.join(d, "config.json")) and bool(
        glob.glob(os.path.join(d, "*.safetensors")) or glob.glob(os.path.join(d, "*.bin"))
    )


def find_verl_actor(path: str) -> tuple[str, str] | None:
    """``(actor_dir, backend)`` when ``path`` is a verl checkpoint (``global_step_N`` or its ``actor``)."""
    for d in (os.path.join(path, "actor"), path):
        if os.path.exists(os.path.join(d, "fsdp_config.json")) or glob.glob(
            os.path.join(d, "model_world_size_*_rank_0.pt")
        ):
            return d, "fsdp"
        if os.path.isdir(os.path.join(d, "model", "dist_ckpt")) or os.path.isdir(
            os.path.join(d, "dist_ckpt")
        ):
            return d, "megatron"
    return None


def merge_checkpoint(actor_dir: str, backend: str, target_dir: str) -> str:
    """Merge a verl actor checkpoint into a Hugging Face directory with verl's model merger.

    FSDP runs in-process (``verl.model_merger.fsdp_model_merger.FSDPModelMerger``); Megatron runs
    ``python -m verl.model_merger merge --backend megatron`` (it sets up its own process group).
    """
    print(f"merging verl {backend} checkpoint {actor_dir} -> {target_dir}")
    if backend == "fsdp":
        from verl.model_merger.base_model_merger import ModelMergerConfig
        from verl.model_merger.fsdp_model_merger import FSDPModelMerger

        os.makedirs(target_dir, exist_ok=True)
        config = ModelMergerConfig(
            operation="merge",
            backend="fsdp",
            local_dir=actor_dir,
            target_dir=target_dir,
            hf_model_config_path=os.path.join(actor_dir, "huggingface"),
        )
        merger = FSDPModelMerger(config)
        merger.merge_and_save()
        merger.cleanup()
    else:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "verl.model_merger",
                "merge",
                "--backend",
                "megatron",
                "--local_dir",
                actor_dir,
                "--target_dir",
                target_dir,
            ],
            check=True,
        )
    if not _has_weights(target_dir):
        raise RuntimeError(
            f"verl's model merger wrote no model to {target_dir}; run "
            f"`python -m verl.model_merger merge --backend {backend} --local_dir {actor_dir} "
            f"--target_dir {target_dir}` by hand to see why"
        )
    return target_dir


def resolve_model(path: str, merged_dir: str | None = None) -> str:
    """A Hugging Face model path for ``path``: itself, or its merged copy when it is a verl checkpoint."""
    if not os.path.exists(path):
        if path.startswith(("/", "./", "../", "~")) or path.count("/") > 1:
            raise FileNotFoundError(
                f"model not found: {path} (no such directory; hub ids look like org/name)"
            )
        return path  # a hub id: let the backend load it
    found = find_verl_actor(path)
    if found is None:
        if not os.path.exists(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"{path}: neither a Hugging Face model directory (no config.json) nor a verl "
                f"checkpoint (no actor/fsdp_config.json or model/dist_ckpt)"
            )
        return path
    actor_dir, backend = found
    hf_dir = os.path.join(actor_dir, "huggingface")
    if _has_weights(hf_dir):  # the checkpoint manager already saved full HF weights
        return hf_dir
    target = merged_dir or os.path.join(actor_dir, "huggingface_merged")
    if _has_weights(target):
        print(f"using merged checkpoint {target}")
        return target
    return merge_checkpoint(actor_dir, backend, target)


# ---------------------------------------------------------------------------- generation backends


def hf_generate_fn(model_path: str, batch_size: int = 8, device: str | None = None) -> GenerateFn:
    """transformers ``generate`` (sampling) on CPU or one GPU: for small models and tests."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype="auto").to(device).eval()

    def generate(prompts: list[str], n: int, s: SamplingSettings) -> list[list[str]]:
        torch.manual_seed(s.seed)
        out: list[list[str]] = []
        for start in tqdm(
            range(0, len(prompts), batch_size), desc="generate (hf)", unit="batch", leave=False
        ):
            batch = prompts[start : start + batch_size]
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            sample = s.temperature > 0
            with torch.no_grad():
                ids = model.generate(
                    **enc,
                    do_sample=sample,
                    temperature=s.temperature if sample else None,
                    top_p=s.top_p if sample else None,
                    max_new_tokens=s.max_tokens,
                    num_return_sequences=n,
                    pad_token_id=tok.pad_token_id,
                )
            texts = tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out.extend(texts[i * n : (i + 1) * n] for i in range(len(batch)))
        return out

    return generate


def vllm_generate_fn(
    model_path: str,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    seed: int = 0,
) -> GenerateFn:
    """vLLM offline generation (GPU)."""
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=model_path,
        tensor_parallel_size=tensor_parallel_size,
        seed=seed,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
    )

    def generate(prompts: list[str], n: int, s: SamplingSettings) -> list[list[str]]:
        params = SamplingParams(
            n=n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed
        )
        outputs = llm.generate(prompts, params)
        return [[c.text for c in o.outputs] for o in outputs]

    return generate


def vllm_available() -> bool:
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


# ---------------------------------------------------------------------------- pass@k


def _check_int(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"pass_at_k: {name} must be an int, got {type(v).__name__} {v!r}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from ``n`` samples of which ``c`` are correct.

    Chen et al. 2021 ("Evaluating Large Language Models Trained on Code", sec. 2.1, eq. 1):
    ``pass@k = 1 - C(n - c, k) / C(n, k)``, the probability that at least one of k samples drawn without
    replacement from the n is correct. Computed in the paper's numerically stable product form
    ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)`` (no huge binomials; n = 2048 is exact to float
    precision), and ``1`` when ``n - c < k`` (every k-subset holds a correct sample). ``pass@1 = c / n``.
    Needs ``1 <= k <= n`` and ``0 <= c <= n``.
    """
    for name, v in (("n", n), ("c", c), ("k", k)):
        _check_int(name, v)
    if n < 1:
        raise ValueError(f"pass_at_k: n (samples per problem) must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c (correct samples) must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(
            f"pass_at_k: k must be in [1, n={n}], got {k}: pass@k needs at least k samples per problem"
        )
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def benchmark_pass_at_k(name: str, problems: list[dict], ks: list[int]) -> dict[str, float]:
    """Mean over problems of :func:`pass_at_k` for each k, from each problem's 0/1 ``scores``.

    Keys are ``str(k)`` (JSON object keys). A score other than 0 or 1 is an error naming the problem.
    """
    out: dict[str, float] = {}
    counts = []
    for p in problems:
        scores = p["scores"]
        bad = [s for s in scores if s not in (0, 1)]
        if bad:
            raise ValueError(
                f"{name}: problem {p.get('index')} has non-0/1 scores {bad[:3]}; pass@k counts correct "
                "samples and needs a 0/1 reward"
            )
        counts.append((len(scores), int(sum(scores))))
    for k in ks:
        vals = [pass_at_k(n, c, k) for n, c in counts]
        out[str(k)] = sum(vals) / len(vals) if vals else 0.0
    return out


def parse_pass_at(text: str) -> list[int]:
    """``"1,8,64,256"`` -> ``[1, 8, 64, 256]`` (sorted, duplicates dropped); the ``--pass-at`` parser."""
    ks = set()
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a positive integer; give a comma-separated list like 1,8,64,256"
            )
        ks.add(int(part))
    return sorted(ks)


# ---------------------------------------------------------------------------- evaluation


def load_manifest(data_dir: str) -> dict[str, Any]:
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: prepare the sets with "
            f"`python -m prefix_rft.data prepare eval --output-dir {data_dir}`"
        )
    fix = f"re-run `python -m prefix_rft.data prepare eval --output-dir {data_dir}` to rewrite it"
    try:
        with open(path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); {fix}") from e
    bad = (
        [k for k, v in manifest.items() if not isinstance(v, dict) or not {"file", "n_samples"} <= set(v)]
        if isinstance(manifest, dict)
        else None
    )
    if bad is None or bad:
        what = "not a JSON object" if bad is None else f"entries {bad} lack 'file' / 'n_samples'"
        raise ValueError(f"{path}: malformed manifest ({what}); {fix}")
    return manifest


def chat_prompts(tokenizer: Any, rows: list[dict]) -> list[str]:
    """Each row's ``prompt`` messages through the tokenizer's chat template (generation prompt added)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; use a model whose tokenizer defines one")
    return [
        tokenizer.apply_chat_template(list(r["prompt"]), tokenize=False, add_generation_prompt=True)
        for r in rows
    ]


def _atomic_json(obj: Any, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def evaluate_benchmark(
    name: str,
    rows: list[dict],
    prompts: list[str],
    n: int,
    settings: SamplingSettings,
    generate: GenerateFn,
    save_responses: bool = False,
) -> dict:
    """Generate ``n`` samples per problem, score them, and summarise (mean over problems of mean@n)."""
    completions = generate(prompts, n, settings)
    if len(completions) != len(prompts) or any(len(c) != n for c in completions):
        raise RuntimeError(
            f"{name}: the generator returned {[len(c) for c in completions]} completions for "
            f"{len(prompts)} prompts x n={n}"
        )
    problems = []
    for row, texts in zip(
        tqdm(rows, desc=f"score {name}", unit="problem", leave=False), completions, strict=True
    ):
        gt = row["reward_model"]["ground_truth"]
        results = [compute_score(row["data_source"], t, gt, row.get("extra_info")) for t in texts]
        scores = [r["score"] for r in results]
        entry = {
            "index": row["extra_info"]["index"],
            "ground_truth": gt,
            "mean": sum(scores) / n,
            "scores": scores,
            "preds": [r["pred"] for r in results],
        }
        if save_responses:
            entry["responses"] = texts
        problems.append(entry)
    mean = sum(p["mean"] for p in problems) / max(1, len(problems))
    return {
        "mean": mean,
        "n_samples": n,
        "metric": f"avg@{n}" if n > 1 else "pass@1",
        "num_problems": len(problems),
        "problems": problems,
    }


def evaluate(
    model: str,
    data_dir: str,
    output: str,
    *,
    benchmarks: list[str] | None = None,
    generate: GenerateFn | None = None,
    tokenizer: Any = None,
    backend: str = "auto",
    settings: SamplingSettings | None = None,
    n_override: int | None = None,
    limit: int | None = None,
    save_responses: bool = False,
    compare_paper: bool = False,
    markdown: str | None = None,
    merged_dir: str | None = None,
    backend_kwargs: dict | None = None,
    pass_at: list[int] | None = None,
) -> dict:
    """Run (or resume) an evaluation; returns the results dict also written to ``output``.

    ``generate``: an injected :data:`GenerateFn` (tests); by default built from ``backend``
    (``auto`` | ``vllm`` | ``hf``) on the resolved model. Benchmarks already in ``output`` with the same
    settings are skipped; a finished benchmark with different settings is an error (use another output).
    ``pass_at``: the k of pass@k (:func:`pass_at_k`), each at most every selected benchmark's samples per
    problem (checked before anything is generated); stored as ``pass_at_k`` per benchmark, finished
    benchmarks included (from their stored scores, nothing regenerated).
    """
    from prefix_rft.data.contract import read_parquet_rows

    settings = settings or SamplingSettings()
    manifest = load_manifest(data_dir)
    names = benchmarks or list(manifest)
    missing = [b for b in names if b not in manifest]
    if missing:
        raise ValueError(f"benchmark(s) {missing} not in {data_dir}/manifest.json (has {list(manifest)})")
    results: dict[str, Any] = {"model": model, "data_dir": os.path.abspath(data_dir), "benchmarks": {}}
    if os.path.exists(output):
        with open(output) as f:
            results = json.load(f)
        if results.get("model") != model:
            raise ValueError(
                f"{output} holds results of {results.get('model')!r}, not {model!r}; use another --output"
            )
    todo = []
    for name in names:
        n = n_override or int(manifest[name]["n_samples"])
        run_settings = {**asdict(settings), "n": n, "limit": limit}
        done = results["benchmarks"].get(name)
        if done is not None:
            if done.get("settings") != run_settings:
                raise ValueError(
                    f"{output} already has {name} with settings {done.get('settings')}, now "
                    f"{run_settings}; use another --output"
                )
            print(f"[{name}] already in {output} (mean {done['mean']:.4f}), skipping")
            continue
        todo.append((name, n, run_settings))
    ks = sorted(set(pass_at or []))
    if ks:
        for name in names:
            done = results["benchmarks"].get(name)
            n = int(done["n_samples"]) if done is not None else n_override or int(manifest[name]["n_samples"])
            if ks[-1] > n:
                where = (
                    f"is already in {output} with n={n}; evaluate into another --output with --n {ks[-1]}"
                    if done is not None
                    else f"has n={n} sample(s) per problem ({'--n' if n_override else 'manifest.json'}); "
                    f"pass --n {ks[-1]} (or more)"
                )
                raise ValueError(
                    f"--pass-at {ks[-1]}: pass@k needs k <= n samples per problem, but {name} {where}, "
                    f"or leave {name} out with --benchmarks"
                )
    absent = [
        os.path.join(data_dir, manifest[name]["file"])
        for name, _, _ in todo
        if not os.path.exists(os.path.join(data_dir, manifest[name]["file"]))
    ]
    if absent:
        raise FileNotFoundError(
            f"not found: {', '.join(absent)} (listed in {data_dir}/manifest.json); re-run "
            f"`python -m prefix_rft.data prepare eval --output-dir {data_dir}`"
        )
    if todo:
        if generate is None or tokenizer is None:
            model_path = resolve_model(model, merged_dir)
            results["model_path"] = model_path
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(model_path)
            if generate is None:
                use = backend if backend != "auto" else ("vllm" if vllm_available() else "hf")
                if use == "vllm" and importlib.util.find_spec("vllm") is None:
                    raise ValueError(
                        '--backend vllm: vllm is not installed; `pip install -e ".[vllm]"` '
                        "or use --backend hf"
                    )
                print(f"generation backend: {use}")
                kw = backend_kwargs or {}
                generate = (
                    vllm_generate_fn(model_path, seed=settings.seed, **kw.get("vllm", {}))
                    if use == "vllm"
                    else hf_generate_fn(model_path, **kw.get("hf", {}))
                )
        for name, n, run_settings in tqdm(todo, desc="benchmarks", unit="set"):
            rows = read_parquet_rows(os.path.join(data_dir, manifest[name]["file"]))
            if limit is not None:
                rows = rows[:limit]
            summary = evaluate_benchmark(
                name, rows, chat_prompts(tokenizer, rows), n, settings, generate, save_responses
            )
            summary["settings"] = run_settings
            if ks:
                summary["pass_at_k"] = benchmark_pass_at_k(name, summary["problems"], ks)
            results["benchmarks"][name] = summary
            _atomic_json(results, output)
            print(
                f"[{name}] {summary['metric']} = {100 * summary['mean']:.1f} over {summary['num_problems']} problems"
            )
    for name in names if ks else []:  # finished benchmarks: pass@k from the stored scores
        b = results["benchmarks"][name]
        merged = {**b.get("pass_at_k", {}), **benchmark_pass_at_k(name, b["problems"], ks)}
        b["pass_at_k"] = dict(sorted(merged.items(), key=lambda kv: int(kv[0])))
    _atomic_json(results, output)
    md_path = markdown or os.path.splitext(output)[0] + ".md"
    with open(md_path, "w") as f:
        f.write(render_markdown(results, compare_paper=compare_paper))
    return results


# ---------------------------------------------------------------------------- report


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def _results_table(
    label: str,
    columns: list[str],
    ours: dict[str, float],
    reference: dict[str, tuple[list[float | None], float | None]] | None = None,
) -> list[str]:
    """One table in the layout of the paper's results table: ``| method | <columns> | avg |``, our row
    first (the average over the columns we have, noted ``(k/N sets)`` when some are missing), then the
    reference rows ``{method: (values, avg)}``."""
    vals = [ours.get(c) for c in columns]
    present = [v for v in vals if v is not None]
    avg = sum(present) / len(present) if present else None
    note = "" if len(present) == len(columns) else f" ({len(present)}/{len(columns)} sets)"
    lines = ["| method | " + " | ".join(columns) + " | avg |", "|---" * (len(columns) + 2) + "|"]
    lines.append(f"| **{label} (ours)** | " + " | ".join(_fmt(v) for v in vals) + f" | {_fmt(avg)}{note} |")
    for method, (row, row_avg) in (reference or {}).items():
        lines.append(f"| {method} | " + " | ".join(_fmt(v) for v in row) + f" | {_fmt(row_avg)} |")
    return lines


def render_markdown(results: dict, compare_paper: bool = False) -> str:
    """The paper's results-table layout (arXiv 2507.01679 sec. 5), scores in %, our row first.

    Three tables: the six math benchmarks (with the paper's Qwen2.5-Math-7B rows under
    ``compare_paper``), the out-of-distribution sets ARC-c / GPQA-diamond / MMLU-Pro in the same layout
    (with the reference averages of :data:`OOD_REFERENCE_7B` under ``compare_paper``), and one row per
    benchmark: its metric (avg@n), problems, score and every stored pass@k.
    """
    bench = results["benchmarks"]
    label = os.path.basename(str(results.get("model", "model")).rstrip("/")) or "model"
    lines = [f"# Evaluation: {results.get('model')}", ""]
    ours = {BENCH_TO_COLUMN[b]: 100 * v["mean"] for b, v in bench.items() if b in BENCH_TO_COLUMN}
    paper = (
        {f"{m} (paper, Qwen2.5-Math-7B)": (row, PAPER_AVG_7B[m]) for m, row in PAPER_RESULTS_7B.items()}
        if compare_paper
        else None
    )
    lines += _results_table(label, PAPER_COLUMNS, ours, paper)
    ood = {OOD_COLUMNS[b]: 100 * v["mean"] for b, v in bench.items() if b in OOD_COLUMNS}
    if ood:
        ref = OOD_REFERENCE_7B if compare_paper else None
        lines += ["", "Out of distribution:", ""] + _results_table(
            label, list(OOD_COLUMNS.values()), ood, ref
        )
    ks = sorted({int(k) for v in bench.values() for k in v.get("pass_at_k", {})})
    head = "| benchmark | metric | problems | score |" + "".join(f" pass@{k} |" for k in ks)
    lines += ["", head, "|---" * (4 + len(ks)) + "|"]
    for b, v in bench.items():
        pk = v.get("pass_at_k", {})
        lines.append(
            f"| {b} | {v['metric']} | {v['num_problems']} | {100 * v['mean']:.1f} |"
            + "".join(f" {_fmt(100 * pk[str(k)] if str(k) in pk else None)} |" for k in ks)
        )
    if bench:
        s = next(iter(bench.values()))["settings"]
        lines += [
            "",
            f"Sampling: temperature {s['temperature']}, top-p {s['top_p']}, max {s['max_tokens']} "
            f"tokens, seed {s['seed']}" + (f", first {s['limit']} problems" if s.get("limit") else ""),
        ]
        if ks:
            lines.append(
                "pass@k: the unbiased estimator of Chen et al. (2021) from each benchmark's n samples "
                "per problem; avg@n is the score column (= pass@1)."
            )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m prefix_rft.eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model", help="Hugging Face model dir / hub id, or a verl checkpoint (global_step_N or actor)"
    )
    p.add_argument("--data-dir", required=True, help="output of `python -m prefix_rft.data prepare eval`")
    p.add_argument("--output", required=True, help="results JSON (a .md table is written next to it)")
    p.add_argument("--benchmarks", default=None, help="comma-separated subset. Default: all in the manifest")
    p.add_argument(
        "--backend",
        choices=["auto", "vllm", "hf"],
        default="auto",
        help="auto = vLLM when importable with a GPU, else hf",
    )
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-tokens", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="samples per problem for every benchmark "
        "(default: the manifest's, avg@32 for AIME/AMC, 1 otherwise)",
    )
    p.add_argument("--limit", type=int, default=None, help="only the first K problems of each benchmark")
    p.add_argument(
        "--pass-at",
        type=parse_pass_at,
        default=None,
        metavar="K1,K2,...",
        help="also report pass@k (unbiased estimator) for these k, e.g. 1,8,64,256; every k <= the "
        "samples per problem (raise it with --n). Finished benchmarks get it from their stored scores",
    )
    p.add_argument("--compare-paper", action="store_true", help="add the paper's 7B numbers to the table")
    p.add_argument("--save-responses", action="store_true", help="keep every generated text in the JSON")
    p.add_argument("--markdown", default=None, help="table path. Default: OUTPUT with .md")
    p.add_argument(
        "--merged-dir",
        default=None,
        help="where a verl checkpoint is merged. Default: <actor>/huggingface_merged",
    )
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM")
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM context length (prompt + response)")
    p.add_argument("--batch-size", type=int, default=8, help="hf backend prompts per generate call")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = SamplingSettings(
        temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed
    )
    backend_kwargs = {
        "vllm": {
            "tensor_parallel_size": args.tensor_parallel_size,
            "gpu_memory_utilization": args.gpu_memory_utilization,
            "max_model_len": args.max_model_len,
        },
        "hf": {"batch_size": args.batch_size},
    }
    try:
        results = evaluate(
            args.model,
            args.data_dir,
            args.output,
            benchmarks=[b.strip() for b in args.benchmarks.split(",")] if args.benchmarks else None,
            backend=args.backend,
            settings=settings,
            n_override=args.n,
            limit=args.limit,
            save_responses=args.save_responses,
            compare_paper=args.compare_paper,
            markdown=args.markdown,
            merged_dir=args.merged_dir,
            backend_kwargs=backend_kwargs,
            pass_at=args.pass_at,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # transformers' "not a valid model identifier" and the like
        print(f"error: model {args.model} could not be loaded: {e}", file=sys.stderr)
        return 1
    print(render_markdown(results, compare_paper=args.compare_paper))
    return 0


if __name__ == "__main__":
    sys.exit(main())
