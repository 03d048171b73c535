"""Loading source rows: a Hugging Face hub id (``datasets.load_dataset``) or a local jsonl/json/parquet
file or directory; writing parquet."""

from __future__ import annotations

import glob
import json
import os
from typing import Any

LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json")


class SourceError(RuntimeError):
    """A dataset could not be loaded; the message says how to load it otherwise."""


def is_local(source: str) -> bool:
    return os.path.exists(source)


def looks_like_path(source: str) -> bool:
    """A source meant as a local file (not a hub id): a path prefix or a data-file suffix."""
    return source.startswith(("/", "./", "../", "~")) or source.endswith(LOCAL_SUFFIXES)


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SourceError(
                    f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                    "re-encode the file as UTF-8"
                ) from e
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SourceError(
                    f"{path}:{lineno}: not a JSON object ({e.msg}); fix or remove that line"
                ) from e
    return rows


def read_local(path: str) -> list[dict]:
    """Rows of a local ``.parquet``, ``.jsonl`` or ``.json`` (a list of objects, or jsonl) file, or of every
    such file in a directory (sorted, recursively; e.g. a downloaded hub snapshot)."""
    if os.path.isdir(path):
        files = sorted(
            f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True) if f.endswith(LOCAL_SUFFIXES)
        )
        if not files:
            raise SourceError(f"{path}: no .parquet/.jsonl/.json files inside")
        rows: list[dict] = []
        for f in files:
            rows.extend(read_local(f))
        return rows
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise SourceError(
                f"{path}: not a readable parquet file ({e}); re-export or re-download it"
            ) from e
    if path.endswith(".jsonl"):
        return _read_jsonl(path)
    if path.endswith(".json"):
        with open(path, encoding="utf-8", errors="strict") as f:
            try:
                head = f.read(1)
            except UnicodeDecodeError as e:
                raise SourceError(f"{path}: not UTF-8 text; re-encode the file as UTF-8") from e
            f.seek(0)
            if head == "[":
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise SourceError(
                        f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg}); fix the file there"
                    ) from e
                if not isinstance(data, list):
                    raise SourceError(f"{path}: expected a JSON list of row objects")
                return data
        return _read_jsonl(path)
    raise SourceError(f"{path}: unsupported file type (use .parquet, .jsonl or .json)")


def load_rows(source: str, *, split: str = "train", config: str | None = None) -> list[dict]:
    """Rows of ``source``: a local file/directory (see :func:`read_local`) or a hub dataset id.

    Hub ids go through ``datasets.load_dataset(source, config, split=split)``. Where the hub cannot be
    reached, download the data elsewhere and pass the local file instead; the error says so.
    """
    if is_local(os.path.expanduser(source)):
        return read_local(os.path.expanduser(source))
    if looks_like_path(source):
        raise SourceError(f"file not found: {source} (check the path; hub ids look like org/name)")
    try:
        import datasets

        ds = datasets.load_dataset(source, config, split=split)
    except Exception as e:  # noqa: BLE001 - re-raised with the fix
        cfg = f" (config {config!r})" if config else ""
        raise SourceError(
            f"could not load {source!r}{cfg} split {split!r} from the Hugging Face hub: "
            f"{type(e).__name__}: {e}. Without hub access, download it elsewhere "
            f"(e.g. `huggingface-cli download --repo-type dataset {source}`) and pass the local "
            f"parquet/jsonl file or directory instead."
        ) from e
    return ds.to_list()


def write_parquet(rows: list[dict[str, Any]], path: str) -> str:
    """Write rows as parquet (nested lists/structs kept) readable by verl's RLHFDataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    table = pa.Table.from_pylist(rows)
    tmp = path + ".tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path
