"""The SFT baseline's data: the RL rows' prompts + their demonstrations, in the columns verl's SFT trainer reads.

verl 0.9.1's SFT trainer (``verl.trainer.sft_trainer``) reads parquet through
``verl.utils.dataset.multiturn_sft_dataset.MultiTurnSFTDataset``: one column ``messages`` (``data.messages_key``)
holding a chat, each turn tokenized with the tokenizer's own chat template
(``verl.utils.tokenizer.chat_template.apply_chat_template``, ``add_generation_prompt=False``), turns concatenated,
loss only on assistant turns minus their generation prompt (``<|im_start|>assistant\\n`` for Qwen).
An SFT row is therefore the RL row's ``prompt`` messages, unchanged, plus one assistant turn with the
demonstration. The tokens before the first loss token are then exactly the tokens verl's RL dataset
(``RLHFDataset``: ``apply_chat_template(prompt, add_generation_prompt=True)``) gives the policy as its prompt:
SFT and RL see the same template (``tests/test_sft_data.py`` checks it token by token).

A row with several demonstrations gives one SFT row per demonstration (the paper's SFT baseline trains on
every demonstration of the data set).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prefix_rft.data.contract import DEMO_KEY

SFT_MESSAGES_KEY = "messages"
"""Column of the SFT parquet (verl's ``data.messages_key`` default)."""

SFT_FILE_NAME = "sft_train.parquet"
"""Name of the SFT parquet that ``python -m prefix_rft.data prepare`` writes next to ``train.parquet``."""


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def sft_rows(rows: Iterable[Mapping[str, Any]], *, demo_key: str = DEMO_KEY) -> list[dict]:
    """RL rows -> SFT rows ``{"messages": prompt + [assistant: demo], "data_source", "extra_info"}``.

    ``extra_info`` keeps the RL row's ``index`` (as ``rl_index``) and which of its demos this is
    (``demo_index``). Rows without a demonstration give no SFT row; a row whose prompt does not end
    with a user turn is an error naming the row.
    """
    out = []
    for i, row in enumerate(rows):
        demos = _plain(row.get(demo_key))
        if demos is None:
            continue
        if isinstance(demos, str):
            demos = [demos]
        prompt = [dict(m) for m in _plain(row["prompt"])]
        if not prompt or prompt[-1].get("role") != "user":
            raise ValueError(
                f"row {i}: prompt must end with a user turn to append the demonstration as the assistant "
                f"turn, got roles {[m.get('role') for m in prompt]}"
            )
        rl_index = _plain(row.get("extra_info") or {}).get("index", i)
        for j, demo in enumerate(demos):
            if not isinstance(demo, str) or not demo.strip():
                continue
            out.append(
                {
                    SFT_MESSAGES_KEY: [*prompt, {"role": "assistant", "content": demo}],
                    "data_source": row.get("data_source", ""),
                    "extra_info": {"rl_index": int(rl_index), "demo_index": j},
                }
            )
    return out


def write_sft_parquet(rows: Iterable[Mapping[str, Any]], path: str, *, demo_key: str = DEMO_KEY) -> int:
    """Write :func:`sft_rows` of ``rows`` to ``path``; returns the number of SFT rows written."""
    import os

    import pandas as pd

    out = sft_rows(rows, demo_key=demo_key)
    if not out:
        raise ValueError(
            f"no SFT rows: no row has a non-empty {demo_key!r} column; nothing to write to {path}"
        )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pd.DataFrame(out).to_parquet(path, index=False)
    return len(out)


def sft_from_rl_parquet(rl_parquet: str, out_path: str, *, demo_key: str = DEMO_KEY) -> int:
    """The SFT parquet of an RL parquet (e.g. the tiny task's ``train.parquet``); returns the row count."""
    import pandas as pd

    df = pd.read_parquet(rl_parquet)
    if demo_key not in df.columns:
        raise ValueError(
            f"{rl_parquet}: no {demo_key!r} column (columns {list(df.columns)}); pass the training parquet "
            f"written by `python -m prefix_rft.data prepare` or the right --demo-key"
        )
    return write_sft_parquet(df.to_dict("records"), out_path, demo_key=demo_key)
