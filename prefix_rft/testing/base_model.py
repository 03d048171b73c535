"""The base model of the CPU learning benchmark: a small Qwen2 pretrained in-process on the addition task.

:func:`build_base_model` trains a byte-level BPE tokenizer (digits kept as single tokens) on the task's text
and pretrains a small Qwen2 causal LM on worked demonstrations (loss on the assistant turn only), so the
base model knows the chat format, the step-by-step layout and ``\\boxed{}``, solves short additions, and
only sometimes solves longer ones (see :data:`BASE_RECIPE`: mostly 1-2 digit problems, a few 3-digit ones,
no 4- or 5-digit ones). This is a *build step* for the benchmark's starting point, not a baseline: the SFT
baseline of the benchmark is verl's own SFT trainer, run from this model.

The result is cached under ``<root>/<hash of the recipe and this module's version>/`` (model directory +
``recipe.json``), so every run on a machine shares one build; building takes about two minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from prefix_rft.testing import arith
from prefix_rft.testing.tiny import train_and_wrap

#: Bump when the build procedure changes in a way the recipe dict does not capture.
BUILD_VERSION = 1

#: Everything that determines the base model (its hash names the cache directory).
BASE_RECIPE: dict = {
    "levels": {"1": 0.3, "2": 0.65, "3": 0.05},
    "examples": 12000,
    "batch_size": 64,
    "lr": 1e-3,
    "warmup_steps": 30,
    # constant after warm-up: a model cooled to lr 0 sits where any fine-tuning step first hurts (measured:
    # 16 SFT steps on correct demonstrations at lr 3e-5 took greedy 2-digit accuracy from 57% to 42%)
    "min_lr_ratio": 1.0,
    "weight_decay": 0.01,
    "hidden_size": 128,
    "num_layers": 3,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 256,
    "vocab_size": 320,
    "seed": 0,
}


def recipe_hash(recipe: dict) -> str:
    """Short stable hash of a recipe dict (and :data:`BUILD_VERSION`)."""
    blob = json.dumps({"recipe": recipe, "version": BUILD_VERSION}, sort_keys=True).encode()
    return hashlib.blake2b(blob, digest_size=6).hexdigest()


def render_prompt(tokenizer, content: str) -> str:
    """The chat-formatted prompt of a user turn with the generation prompt, as verl renders it for RL."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def build_tokenizer(recipe: dict, out_dir: str | None = None):
    """Byte-level BPE trained on the task's chat-formatted text; each digit is its own pre-token (so no
    merge ever spans two digits). eos = ``<|im_end|>``, pad = ``<|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    texts = []
    for content, demo in arith.corpus(
        {1: 1, 2: 1, 3: 1, 4: 1, 5: 1},
        500,
        seed=1,
    ):
        texts.append(f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n{demo}<|im_end|>\n")
    return train_and_wrap(tok, texts, recipe["vocab_size"], out_dir)


def _batches(tokenizer, pairs: list[tuple[str, str]], batch_size: int):
    """Right-padded (input_ids, labels, attention_mask) batches; labels mask the prompt and padding."""
    import torch

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    for i in range(0, len(pairs) - batch_size + 1, batch_size):
        seqs, labs = [], []
        for content, demo in pairs[i : i + batch_size]:
            p = tokenizer(render_prompt(tokenizer, content), add_special_tokens=False)["input_ids"]
            r = tokenizer(demo, add_special_tokens=False)["input_ids"] + [eos]
            seqs.append(p + r)
            labs.append([-100] * len(p) + r)
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        labels = torch.full((len(seqs), width), -100, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, (s, lab) in enumerate(zip(seqs, labs, strict=True)):
            ids[j, : len(s)] = torch.tensor(s)
            labels[j, : len(s)] = torch.tensor(lab)
            mask[j, : len(s)] = 1
        yield ids, labels, mask


def pretrain(recipe: dict, out_dir: str, log: Callable[[str], None] = print) -> dict:
    """Train the tokenizer and the model of ``recipe`` and save both to ``out_dir``; returns a summary."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(recipe["seed"])
    tokenizer = build_tokenizer(recipe)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=recipe["hidden_size"],
        intermediate_size=recipe["intermediate_size"],
        num_hidden_layers=recipe["num_layers"],
        num_attention_heads=recipe["num_heads"],
        num_key_value_heads=recipe["num_kv_heads"],
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )
    model = Qwen2ForCausalLM(config).to(torch.float32)
    levels = {int(k): float(v) for k, v in recipe["levels"].items()}
    pairs = arith.corpus(levels, recipe["examples"], seed=recipe["seed"])
    steps = len(pairs) // recipe["batch_size"]
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    warm = recipe["warmup_steps"]
    floor = float(recipe.get("min_lr_ratio", 0.0))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warm)
            * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        ),
    )
    model.train()
    start = time.monotonic()
    loss_ema = None
    for step, (ids, labels, mask) in enumerate(_batches(tokenizer, pairs, recipe["batch_size"])):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if step % 50 == 0 or step == steps - 1:
            log(f"[base] step {step + 1}/{steps} loss {loss_ema:.4f} ({time.monotonic() - start:.0f}s)")
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    return {"steps": steps, "final_loss": loss_ema, "params": n_params, "wall_s": time.monotonic() - start}


def build_base_model(
    root: str | os.PathLike = "outputs/learning_base",
    recipe: dict | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Path of the cached base model for ``recipe`` (default :data:`BASE_RECIPE`), building it if missing.

    A build writes to a temporary directory and renames it when complete, so an interrupted build is
    never mistaken for a cached one.
    """
    recipe = dict(BASE_RECIPE if recipe is None else recipe)
    target = Path(root).resolve() / recipe_hash(recipe)
    model_dir = target / "model"
    if (target / "recipe.json").exists() and (model_dir / "config.json").exists():
        return str(model_dir)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    log(f"[base] building the base model in {target} (cached for later runs)")
    summary = pretrain(recipe, str(tmp / "model"), log=log)
    (tmp / "recipe.json").write_text(json.dumps({"recipe": recipe, "build": summary}, indent=1))
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return str(model_dir)


def greedy_accuracy(
    model_dir: str,
    levels=(1, 2, 3, 4),
    n: int = 100,
    temperature: float = 0.0,
    max_new_tokens: int = 96,
    seed: int = 0,
) -> dict[int, float]:
    """Accuracy per level of ``model_dir`` on ``n`` evaluation problems per level (transformers generate,
    scored by the project's reward). A quick in-process check used while building, not the benchmark's
    evaluation (that is verl's validation inside each run)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefix_rft.reward import compute_score

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(seed)
    out = {}
    for level in levels:
        rows = arith.rows(level, n, seed=0, split="eval")
        prompts = [render_prompt(tok, r["prompt"][0]["content"]) for r in rows]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=None,
                top_k=None,
            )
        texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        score = [
            compute_score(
                data_source=r["data_source"], solution_str=t, ground_truth=r["reward_model"]["ground_truth"]
            )["score"]
            for r, t in zip(rows, texts, strict=True)
        ]
        out[level] = sum(score) / len(score)
    return out
