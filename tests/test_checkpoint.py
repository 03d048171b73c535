"""prefix_rft.checkpoint and prefix_rft.metrics_file: nothing lost or half-written on a fault.

The real trainer runs these in tests/test_e2e_cpu.py (a marker per checkpoint, a broken newest checkpoint
skipped on resume, the metrics file whole across the resume); here each fault is reproduced on disk.
"""

from __future__ import annotations

import errno
import json
import logging
import os

import pytest

from prefix_rft.checkpoint import (
    MARKER,
    CheckpointError,
    check_resume_path,
    resolve_resume,
    save_complete,
)
from prefix_rft.metrics_file import lines_to_keep, restore_lines


def _verl_save(root, step, fail_after: int | None = None):
    """What verl's _save_checkpoint writes (actor shards, data.pt, then the tracker); optionally fail part-way
    with ENOSPC, as a full disk does."""

    def save():
        folder = root / f"global_step_{step}"
        (folder / "actor").mkdir(parents=True, exist_ok=True)
        files = [("actor/model_world_size_1_rank_0.pt", 4000), ("actor/optim_world_size_1_rank_0.pt", 8000)]
        files += [("actor/extra_state_world_size_1_rank_0.pt", 100), ("data.pt", 50)]
        for i, (name, size) in enumerate(files):
            if fail_after is not None and i == fail_after:
                (folder / name).write_bytes(b"x" * (size // 2))  # half-written
                raise OSError(errno.ENOSPC, "No space left on device")
            (folder / name).write_bytes(b"x" * size)
        (root / "latest_checkpointed_iteration.txt").write_text(str(step))

    return save


def _save(root, step, **kw):
    save_complete(str(root / f"global_step_{step}"), step, _verl_save(root, step, **kw))


def test_complete_checkpoint_gets_a_marker_and_is_resumed(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    marker = json.loads((tmp_path / "global_step_2" / MARKER).read_text())
    assert marker["step"] == 2 and marker["files"]["actor/optim_world_size_1_rank_0.pt"] == 8000
    assert resolve_resume(str(tmp_path)) == str(tmp_path / "global_step_2")
    assert resolve_resume(str(tmp_path / "nothing_yet")) is None


def test_failed_save_names_path_and_cause_and_leaves_no_partial_folder(tmp_path):
    """Before: `basic_ios::clear: iostream error`, no path; a partial global_step_1 left behind."""
    _save(tmp_path, 1)
    with pytest.raises(CheckpointError) as err:
        _save(tmp_path, 2, fail_after=1)
    message = str(err.value)
    assert f"saving the checkpoint of step 2 to {tmp_path / 'global_step_2'} failed" in message
    assert "No space left on device" in message and "Free space there:" in message
    assert "partial folder was removed" in message
    assert not (tmp_path / "global_step_2").exists()
    assert resolve_resume(str(tmp_path)) == str(tmp_path / "global_step_1")


def test_newest_checkpoint_missing_a_file_falls_back_with_a_warning(tmp_path, caplog):
    """Before: FileNotFoundError deep in verl's loader after ~48 s."""
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    os.remove(tmp_path / "global_step_2" / "actor" / "optim_world_size_1_rank_0.pt")
    with caplog.at_level(logging.WARNING, logger="prefix_rft.checkpoint"):
        assert resolve_resume(str(tmp_path)) == str(tmp_path / "global_step_1")
    assert "global_step_2 is incomplete: actor/optim_world_size_1_rank_0.pt is missing" in caplog.text
    # a truncated file is caught too
    _save(tmp_path, 3)
    with open(tmp_path / "global_step_3" / "data.pt", "r+b") as f:
        f.truncate(10)
    assert resolve_resume(str(tmp_path)) == str(tmp_path / "global_step_1")
    # an explicit resume_from_path to a broken folder is refused, naming what is wrong
    with pytest.raises(
        CheckpointError, match=r"global_step_2 cannot be resumed from: actor/optim.* is missing"
    ):
        check_resume_path(str(tmp_path / "global_step_2"))


def test_unmarked_newest_folder_is_an_unfinished_save(tmp_path, caplog):
    """verl wrote the tracker, the run died before the marker: the folder is not trusted."""
    _save(tmp_path, 1)
    _verl_save(tmp_path, 2)()  # no marker
    with caplog.at_level(logging.WARNING, logger="prefix_rft.checkpoint"):
        assert resolve_resume(str(tmp_path)) == str(tmp_path / "global_step_1")
    assert f"has no {MARKER}" in caplog.text


@pytest.mark.parametrize("content", ["", "abc", "\n"])
def test_unreadable_tracker_falls_back_to_the_newest_complete(tmp_path, caplog, content):
    """Before: an empty latest_checkpointed_iteration.txt gave `ValueError: invalid literal for int()`."""
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text(content)
    with caplog.at_level(logging.WARNING, logger="prefix_rft.checkpoint"):
        assert resolve_resume(str(tmp_path)) == str(tmp_path / "global_step_2")
    assert "does not hold a step number" in caplog.text


def test_no_complete_checkpoint_refuses_naming_the_folder_and_the_fix(tmp_path):
    _save(tmp_path, 1)
    os.remove(tmp_path / "global_step_1" / "data.pt")
    with pytest.raises(CheckpointError) as err:
        resolve_resume(str(tmp_path))
    message = str(err.value)
    assert f"cannot resume from trainer.default_local_dir={tmp_path}" in message
    assert "global_step_1 is incomplete: data.pt is missing" in message
    assert "trainer.resume_mode=disable" in message


def test_plain_verl_checkpoints_without_markers_still_resume(tmp_path):
    _verl_save(tmp_path, 4)()
    assert resolve_resume(str(tmp_path)) == str(tmp_path / "global_step_4")


class _FileLogger:
    """verl's FileLogger: opens its file with "wb" (truncating it) and appends one JSON line per log call."""

    def __init__(self, path):
        self.filepath = path
        self.fp = open(path, "wb", buffering=0)  # noqa: SIM115

    def log(self, data, step):
        self.fp.write(json.dumps({"step": step, "data": data}).encode() + b"\n")


def test_metrics_of_steps_before_the_resume_survive_verls_file_logger(tmp_path):
    """Before: verl's FileLogger ("wb") erased steps 1-2 when the run resumed from step 2."""
    path = str(tmp_path / "metrics.jsonl")
    first = _FileLogger(path)
    for step in (1, 2, 3):  # step 3 ran, but the checkpoint is at step 2: step 3 is trained again
        first.log({"loss": float(step)}, step)
    first.fp.write(b'{"step": 4, "da')  # a line cut by the crash
    first.fp.close()
    kept = lines_to_keep(path, resumed_step=2)
    second = _FileLogger(path)
    second.log({"val": 0.5}, 2)  # verl's validation before training, at the resumed step
    restore_lines(second, kept)
    second.log({"loss": 30.0}, 3)
    second.fp.close()
    records = [json.loads(line) for line in open(path)]
    assert [(r["step"], r["data"]) for r in records] == [
        (1, {"loss": 1.0}),
        (2, {"loss": 2.0}),
        (2, {"val": 0.5}),
        (3, {"loss": 30.0}),
    ]
    assert lines_to_keep(path, resumed_step=0) == []  # from scratch: verl's truncation stands
