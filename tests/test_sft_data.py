"""The SFT parquet (prefix_rft.data.sft): the rows, `prepare` writing it, and token alignment with RL.

The alignment tests tokenize one row both ways with verl's own code: verl's SFT dataset
(``MultiTurnSFTDataset``, what ``verl.trainer.sft_trainer`` trains on) and verl's agent-loop prompt builder
(``create_continuous_token_builder(...).build_initial_tokens``, what the RL policy is prompted with). The
tokens before the first SFT loss token must be the RL prompt exactly, and the loss tokens must start with the
demo ids the Prefix-RFT agent loop splices (``encode(demo) + eos``).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from omegaconf import OmegaConf

from benchmarks.fixtures.tiny import build_tiny_tokenizer, synthetic_math_rows
from prefix_rft.data.sft import SFT_FILE_NAME, sft_from_rl_parquet, sft_rows, write_sft_parquet
from prefix_rft.data.train import prepare_openr1

# A Qwen2.5-style template: a default system turn when the chat has none (the case where a per-turn
# tokenization could drift from the RL prompt).
QWEN25_STYLE_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_sft_rows_one_per_demo_prompt_unchanged():
    rows = [
        {
            "data_source": "d",
            "prompt": [{"role": "user", "content": "Q0"}],
            "extra_info": {"index": 7, "split": "train"},
            "demonstrations": ["A", "B"],
        },
        {"data_source": "d", "prompt": [{"role": "user", "content": "Q1"}], "extra_info": {"index": 8}},
        {"data_source": "e", "prompt": [{"role": "user", "content": "Q2"}], "demonstrations": "C"},
    ]
    assert sft_rows(rows) == [
        {
            "messages": [{"role": "user", "content": "Q0"}, {"role": "assistant", "content": "A"}],
            "data_source": "d",
            "extra_info": {"rl_index": 7, "demo_index": 0},
        },
        {
            "messages": [{"role": "user", "content": "Q0"}, {"role": "assistant", "content": "B"}],
            "data_source": "d",
            "extra_info": {"rl_index": 7, "demo_index": 1},
        },
        {
            "messages": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "C"}],
            "data_source": "e",
            "extra_info": {"rl_index": 2, "demo_index": 0},
        },
    ]


def test_sft_rows_errors_name_the_row_and_the_fix(tmp_path):
    bad = [{"prompt": [{"role": "assistant", "content": "x"}], "demonstrations": ["d"]}]
    with pytest.raises(ValueError, match=r"row 0: prompt must end with a user turn.*\['assistant'\]"):
        sft_rows(bad)
    with pytest.raises(ValueError, match="no row has a non-empty 'demonstrations' column"):
        write_sft_parquet([{"prompt": [{"role": "user", "content": "q"}]}], str(tmp_path / "x.parquet"))
    pd.DataFrame([{"prompt": [{"role": "user", "content": "q"}]}]).to_parquet(tmp_path / "rl.parquet")
    with pytest.raises(ValueError, match="no 'demonstrations' column.*--demo-key"):
        sft_from_rl_parquet(str(tmp_path / "rl.parquet"), str(tmp_path / "s.parquet"))


def test_prepare_writes_the_sft_parquet(tmp_path):
    from pathlib import Path

    src = Path(__file__).parent / "fixtures" / "openr1_sample.jsonl"
    report = prepare_openr1(str(src), output_dir=str(tmp_path / "out"), val_size=1)
    sft_path = tmp_path / "out" / SFT_FILE_NAME
    assert report.outputs["sft_train"] == str(sft_path)
    rl = pd.read_parquet(tmp_path / "out" / "train.parquet")
    sft = pd.read_parquet(sft_path)
    assert len(rl) == 4 and len(sft) == 4  # one demo per training row; the val row gives none
    for (_, r), (_, s) in zip(rl.iterrows(), sft.iterrows(), strict=True):
        msgs = list(s["messages"])
        assert [dict(m) for m in msgs[:-1]] == [dict(m) for m in r["prompt"]]
        assert dict(msgs[-1]) == {"role": "assistant", "content": r["demonstrations"][0]}
    assert json.load(open(tmp_path / "out" / "prepare_report.json"))["outputs"]["sft_train"] == str(sft_path)


def _sft_dataset(parquet: str, tok):
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    cfg = OmegaConf.create({"pad_mode": "no_padding", "max_length": 4096, "messages_key": "messages"})
    return MultiTurnSFTDataset(parquet, tok, cfg)


@pytest.mark.parametrize("template", ["tiny", "qwen25_style"])
def test_sft_prompt_tokens_equal_the_rl_prompt_and_loss_starts_with_the_demo_ids(tmp_path, template):
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    tok = build_tiny_tokenizer()
    if template == "qwen25_style":
        tok.chat_template = QWEN25_STYLE_TEMPLATE
    rows = synthetic_math_rows(6, seed=3, split="train")
    path = str(tmp_path / "sft.parquet")
    assert write_sft_parquet(rows, path) == 6
    ds = _sft_dataset(path, tok)
    builder = create_continuous_token_builder(tok, hf_model_type="qwen2")
    for i, row in enumerate(rows):
        item = ds[i]
        ids, loss = item["input_ids"].tolist(), item["loss_mask"].tolist()
        first = loss.index(1)
        rl_prompt = list(builder.build_initial_tokens(list(row["prompt"])))
        assert ids[:first] == rl_prompt, f"row {i}: SFT prompt tokens differ from the RL prompt"
        assert all(m == 0 for m in loss[:first]) and all(m == 1 for m in loss[first:])
        demo_ids = tok.encode(row["demonstrations"][0], add_special_tokens=False) + [tok.eos_token_id]
        assert ids[first : first + len(demo_ids)] == demo_ids
        # the template closes the turn with "\n" after <|im_end|>: the only SFT target beyond the demo + eos
        assert tok.decode(ids[first + len(demo_ids) :]) == "\n"
    if template == "qwen25_style":
        assert tok.decode(ds[0]["input_ids"][:6].tolist()).startswith("<|im_start|>system")
