"""Keep verl's metrics file (``trainer.logger=[...,file]``) whole across a resume.

verl 0.9.1's ``verl.utils.tracking.FileLogger`` opens its JSON-lines file with ``"wb"``: a resumed run erases
the metrics of every step before the resume. The trainer (:class:`prefix_rft.trainer.PrefixRFTTrainer`) reads
the lines of the steps up to the checkpoint before verl's logger truncates the file (:func:`lines_to_keep`),
and writes them back in front of the new ones right after the logger is created (:func:`restore_lines`).
Lines of steps after the checkpoint (trained again after the resume) are dropped, so no step appears twice.
"""

from __future__ import annotations

import json
import os
from typing import Any


def file_logger_path(project_name: str, experiment_name: str) -> str:
    """The file verl's ``FileLogger`` writes: ``$VERL_FILE_LOGGER_PATH``, else
    ``$VERL_FILE_LOGGER_ROOT/<project>/<experiment>.jsonl`` (root ``.``), as ``FileLogger.__init__`` builds it."""
    path = os.getenv("VERL_FILE_LOGGER_PATH", None)
    if path is None:
        root = os.path.expanduser(os.getenv("VERL_FILE_LOGGER_ROOT", "."))
        path = os.path.join(root, project_name, f"{experiment_name}.jsonl")
    return path


def lines_to_keep(path: str, resumed_step: int) -> list[bytes]:
    """The lines of ``path`` logged at steps ``<= resumed_step`` (``[]`` when training from scratch).

    A line that does not parse (e.g. cut by a crash while being written) is dropped.
    """
    if resumed_step <= 0 or not os.path.isfile(path):
        return []
    kept = []
    with open(path, "rb") as f:
        for line in f:
            try:
                step = int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue
            if step <= resumed_step:
                kept.append(line if line.endswith(b"\n") else line + b"\n")
    return kept


def restore_lines(file_logger: Any, lines: list[bytes]) -> None:
    """Put ``lines`` at the head of the open ``FileLogger``'s file, before what it has written so far."""
    if not lines:
        return
    path = file_logger.filepath
    file_logger.fp.close()
    with open(path, "rb") as f:
        written = f.read()
    tmp = path + ".restore"
    with open(tmp, "wb") as f:
        f.writelines(lines)
        f.write(written)
    os.replace(tmp, path)
    file_logger.fp = open(path, "ab", buffering=0)  # noqa: SIM115 - FileLogger.finish closes it
