"""The data contract: verl's RL parquet columns plus the demonstration column.

Every row written by ``python -m prefix_rft.data prepare ...`` passes :func:`validate_rows`; the recipe can
call :func:`validate_parquet` on any user-supplied file before training starts.

A row::

    {
      "data_source": str,                                   # non-empty; verl groups val metrics by it
      "prompt": [{"role": "user", "content": str}, ...],    # chat messages; the last one is a user turn
      "ability": str,
      "reward_model": {"ground_truth": str, "style": str},  # ground_truth non-empty
      "extra_info": {"index": int, "split": str, ...},
      "demonstrations": [str, ...],                         # training rows only (also accepted: a str,
                                                            # or [{"content": str}, ...] messages)
    }
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

DEMO_KEY = "demonstrations"
"""Default name of the demonstration column (``prefix_rft.demo_key``)."""

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}"
"""The instruction appended to every math problem as part of the single user turn (paper sec. 4, no
system prompt). Joined to the problem with a newline, as in the authors' data preparation."""

REQUIRED_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")


class ContractError(ValueError):
    """Rows do not follow the data contract; the message lists the offending rows, keys and fixes."""


def _plain(value: Any) -> Any:
    """numpy arrays / scalars (what pandas gives for parquet list columns) as plain Python values."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def demo_texts(value: Any) -> list[str] | None:
    """The texts of a demo value, or None when its type is not one the agent loop reads.

    Accepted (as ``prefix_rft.agent_loop.extract_demos`` reads them): a string, a list of strings, a
    ``{"content": str}`` message or a list of them (strings and messages may mix). Empty texts are kept
    (the caller decides whether an empty demo is a problem).
    """
    value = _plain(value)
    if isinstance(value, (str, Mapping)):
        value = [value]
    if not isinstance(value, list):
        return None
    texts = []
    for item in value:
        item = _plain(item)
        if isinstance(item, Mapping):
            item = item.get("content")
        if not isinstance(item, str):
            return None
        texts.append(item)
    return texts


def has_usable_demo(value: Any) -> bool:
    """True when a demo value holds at least one non-empty text the agent loop can prefix from."""
    texts = demo_texts(value) if value is not None else None
    return bool(texts) and any(t.strip() for t in texts)


def row_problems(
    row: Mapping[str, Any], *, demo_key: str = DEMO_KEY, require_demos: bool | None = None
) -> list[str]:
    """Contract violations of one row, each as ``"<key>: <what is wrong> (<fix>)"``; ``[]`` when valid.

    ``require_demos``: True = the demo column must hold at least one non-empty string; False = the row
    must carry no demos (validation rows); None = the column is optional but well-typed when present.
    """
    problems = []
    for key in REQUIRED_COLUMNS:
        if key not in row:
            problems.append(f"{key}: missing column (every verl RL row needs {', '.join(REQUIRED_COLUMNS)})")
    ds = row.get("data_source")
    if "data_source" in row and (not isinstance(ds, str) or not ds):
        problems.append("data_source: must be a non-empty string")
    prompt = _plain(row.get("prompt"))
    if "prompt" in row:
        if not isinstance(prompt, list) or not prompt:
            problems.append("prompt: must be a non-empty list of {role, content} messages")
        else:
            for t, msg in enumerate(prompt):
                if (
                    not isinstance(msg, Mapping)
                    or not isinstance(msg.get("role"), str)
                    or not isinstance(msg.get("content"), str)
                ):
                    problems.append(f"prompt[{t}]: must be a {{'role': str, 'content': str}} message")
                    break
            else:
                if prompt[-1]["role"] != "user":
                    problems.append("prompt: the last message must be the user turn (the problem)")
                if not prompt[-1]["content"].strip():
                    problems.append("prompt: the user turn is empty")
    if "ability" in row and not isinstance(row.get("ability"), str):
        problems.append("ability: must be a string (e.g. 'math')")
    rm = row.get("reward_model")
    if "reward_model" in row:
        if not isinstance(rm, Mapping):
            problems.append("reward_model: must be a {'ground_truth': str, 'style': str} mapping")
        else:
            gt = rm.get("ground_truth")
            if not isinstance(gt, str) or not gt.strip():
                problems.append("reward_model.ground_truth: must be a non-empty string (the final answer)")
            if not isinstance(rm.get("style"), str):
                problems.append("reward_model.style: must be a string (use 'rule')")
    ei = row.get("extra_info")
    if "extra_info" in row:
        if not isinstance(ei, Mapping):
            problems.append("extra_info: must be a mapping with 'index' (int) and 'split' (str)")
        else:
            if not isinstance(_plain(ei.get("index")), int) or isinstance(ei.get("index"), bool):
                problems.append("extra_info.index: must be an int")
            if not isinstance(ei.get("split"), str):
                problems.append("extra_info.split: must be a string ('train', 'val', 'test')")
    demos = _plain(row.get(demo_key))
    if demos is not None:
        items = demo_texts(demos)
        if items is None:
            problems.append(
                f"{demo_key}: must be a string, a list of strings or a list of {{'content': str}} messages"
            )
        elif require_demos is False and any(d.strip() for d in items):
            problems.append(f"{demo_key}: validation rows must carry no demonstrations (drop the column)")
        elif require_demos and not any(d.strip() for d in items):
            problems.append(f"{demo_key}: needs at least one non-empty demonstration")
    elif require_demos:
        problems.append(
            f"{demo_key}: missing (training rows need a demonstration; set prefix_rft.demo_key "
            f"if your column has another name)"
        )
    return problems


def validate_rows(
    rows: Iterable[Mapping[str, Any]],
    *,
    demo_key: str = DEMO_KEY,
    require_demos: bool | None = None,
    where: str = "rows",
    max_report: int = 10,
) -> int:
    """Check every row against the contract; return the number of rows or raise :class:`ContractError`.

    The error lists up to ``max_report`` offending rows as ``<where> row <i>: <key>: <problem> (<fix>)``.
    """
    bad: list[str] = []
    n_bad = 0
    n = 0
    for i, row in enumerate(rows):
        n += 1
        problems = row_problems(row, demo_key=demo_key, require_demos=require_demos)
        if problems:
            n_bad += 1
            if len(bad) < max_report:
                bad.append(f"{where} row {i}: " + "; ".join(problems))
    if n_bad:
        more = f"\n... and {n_bad - len(bad)} more rows" if n_bad > len(bad) else ""
        raise ContractError(f"{n_bad} of {n} {where} rows break the data contract:\n" + "\n".join(bad) + more)
    return n


def read_parquet_rows(path: str) -> list[dict]:
    """All rows of a parquet file as plain Python dicts (lists, not numpy arrays)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def validate_parquet(path: str, *, demo_key: str = DEMO_KEY, require_demos: bool | None = None) -> int:
    """:func:`validate_rows` on a parquet file (e.g. a user's own training file); returns its row count."""
    return validate_rows(read_parquet_rows(path), demo_key=demo_key, require_demos=require_demos, where=path)
