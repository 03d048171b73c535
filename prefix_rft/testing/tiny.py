"""Tiny, deterministic, locally built assets for tests and the CPU demo (nothing is downloaded).

- a byte-level BPE tokenizer with a Qwen-style chat template,
- a 2-layer Qwen2 causal LM (about 100k parameters) saved as a Hugging Face model directory,
- a synthetic arithmetic task with worked demonstrations ending in ``\\boxed{answer}``, as verl RL rows.
"""

from __future__ import annotations

import os
import random
from typing import Any

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _problem(rng: random.Random) -> tuple[str, str, str]:
    """One arithmetic problem: (question, worked solution, answer)."""
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    op = rng.choice(["+", "-", "*"])
    ans = a + b if op == "+" else a - b if op == "-" else a * b
    words = {"+": "add", "-": "subtract", "*": "multiply"}[op]
    question = f"What is {a} {op} {b}?"
    solution = f"We {words} {a} and {b}: {a} {op} {b} = {ans}. So the answer is \\boxed{{{ans}}}."
    return question, solution, str(ans)


def _corpus(n: int = 400) -> list[str]:
    rng = random.Random(1234)
    texts = []
    for _ in range(n):
        q, s, _ = _problem(rng)
        texts.append(f"<|im_start|>user\n{q} {INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n{s}<|im_end|>\n")
    texts.append("<think>\n</think>\n0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return texts


def build_tiny_tokenizer(out_dir: str | None = None, vocab_size: int = 400):
    """Train a byte-level BPE tokenizer on the synthetic corpus (deterministic) and wrap it for transformers.

    eos = ``<|im_end|>`` (the end of an assistant turn), pad = ``<|endoftext|>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return train_and_wrap(tok, _corpus(), vocab_size, out_dir)


def train_and_wrap(tok, texts, vocab_size: int, out_dir: str | None = None):
    """Train the BPE ``tok`` on ``texts`` with the chat special tokens and wrap it for transformers with the
    Qwen-style chat template: eos = ``<|im_end|>``, pad = ``<|endoftext|>``, left padding."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.padding_side = "left"
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        hf.save_pretrained(out_dir)
    return hf


def build_tiny_model(
    out_dir: str, tokenizer: Any = None, seed: int = 0, hidden_size: int = 64, num_layers: int = 2
) -> str:
    """Save a randomly initialised 2-layer Qwen2ForCausalLM (sdpa attention) and its tokenizer to ``out_dir``."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def synthetic_math_rows(n: int, seed: int = 0, split: str = "train", with_demos: bool = True) -> list[dict]:
    """``n`` verl RL rows of the synthetic arithmetic task; train rows carry one worked demonstration."""
    rng = random.Random(f"{seed}-{split}")
    rows = []
    for i in range(n):
        question, solution, answer = _problem(rng)
        row = {
            "data_source": "synthetic_math",
            "prompt": [{"role": "user", "content": f"{question} {INSTRUCTION}"}],
            "ability": "math",
            "reward_model": {"ground_truth": answer, "style": "rule"},
            "extra_info": {"index": i, "split": split},
        }
        if with_demos and split == "train":
            row["demonstrations"] = [solution]
        rows.append(row)
    return rows


def write_parquet(rows: list[dict], path: str) -> str:
    """Write rows as a parquet file readable by verl's RLHFDataset."""
    import pandas as pd

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path
