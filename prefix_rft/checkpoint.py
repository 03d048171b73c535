"""Checkpoints that are either complete or not used: start-up checks, a completion marker, a safe resume.

verl 0.9.1's trainer (``verl.trainer.ppo.v1.trainer_base.PPOTrainer``) saves ``global_step_<N>/`` with
``_save_checkpoint`` and, on ``trainer.resume_mode=auto``, resumes from the step named in
``latest_checkpointed_iteration.txt`` (``verl.utils.checkpoint.checkpoint_manager.find_latest_ckpt_path``).
Nothing there checks the folder: a file missing makes the loader fail deep in a worker, an empty tracker
raises ``ValueError: invalid literal for int()``, and a save that fails half-way (disk full) leaves a partial
folder behind. This module (no verl import) adds:

* :func:`check_checkpoint_dir`: at start-up, ``trainer.default_local_dir`` must be writable and have room
  for one more checkpoint (:func:`estimate_checkpoint_bytes`), else the run is refused before training;
* :func:`save_complete`: runs verl's save; on success writes :data:`MARKER` last (the files and sizes of the
  checkpoint), on failure removes the partial folder and raises :class:`CheckpointError` naming the path,
  the cause and the free space;
* :func:`resolve_resume`: the folder a resume should load: the one the tracker names when it is complete,
  else the newest complete one, with a warning naming what was wrong; :class:`CheckpointError` (naming the
  folder and the fix) when no complete checkpoint is left.

A checkpoint folder written before markers existed (by plain verl) is accepted when it holds an ``actor/``
folder with files, as long as no sibling folder carries a marker.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

MARKER = "prefix_rft_checkpoint.json"
"""Written into ``global_step_<N>/`` after everything else of the checkpoint: ``{"step", "files"}``."""

TRACKER = "latest_checkpointed_iteration.txt"
STEP_DIR = re.compile(r"^global_step_(\d+)$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

BYTES_PER_PARAM = {"model": 4, "optimizer": 8, "hf_model": 4}
"""Bytes a checkpoint stores per model parameter, per entry of ``actor.checkpoint.save_contents``.

``model``: the fp32 parameters of the FSDP/Megatron actor; ``optimizer``: AdamW's two fp32 moments;
``hf_model``: a Hugging Face copy (fp32 at most). ``extra`` (RNG, scheduler) is a few kilobytes."""
SAFETY_FACTOR = 1.1


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or resumed from; the message names the path, the cause and the fix."""


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        try:
            node = node.get(part, None) if hasattr(node, "get") else getattr(node, part, None)
        except Exception:  # noqa: BLE001 - omegaconf struct errors on missing keys
            return default
        if node is None:
            return default
    return node


def checkpoint_root(default_local_dir: str) -> str:
    """``trainer.default_local_dir`` as verl resolves it (relative paths are under the working directory)."""
    path = os.path.expanduser(str(default_local_dir))
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


# ----------------------------------------------------------------------------- start-up checks


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def model_parameter_count(model_path: Any) -> int | None:
    """Parameters of the model at ``model_path`` from its weight files' size and ``torch_dtype``, or None.

    Reads a local folder only (a hub id that is not downloaded yet gives None: nothing to estimate from).
    """
    if not model_path:
        return None
    path = os.path.expanduser(str(model_path))
    if not os.path.isdir(path):
        return None
    weight_bytes = sum(
        os.path.getsize(os.path.join(path, f))
        for f in os.listdir(path)
        if f.endswith(WEIGHT_SUFFIXES) and os.path.isfile(os.path.join(path, f))
    )
    if not weight_bytes:
        return None
    dtype = None
    config_file = os.path.join(path, "config.json")
    if os.path.isfile(config_file):
        with open(config_file) as f:
            hf = json.load(f)
        dtype = str(hf.get("torch_dtype") or hf.get("dtype") or "")
    per_param = 4 if dtype in ("float32", "torch.float32") else 2
    return weight_bytes // per_param


def estimate_checkpoint_bytes(cfg: Any) -> int | None:
    """Bytes one ``global_step_<N>/`` folder takes (actor, and critic when configured), or None if unknown.

    ``parameters x`` :data:`BYTES_PER_PARAM` summed over ``actor_rollout_ref.actor.checkpoint.save_contents``.
    """
    params = model_parameter_count(_get(cfg, "actor_rollout_ref.model.path"))
    if params is None:
        return None
    contents = _get(cfg, "actor_rollout_ref.actor.checkpoint.save_contents", ["model", "optimizer", "extra"])
    per_param = sum(BYTES_PER_PARAM.get(str(c), 0) for c in contents)
    total = params * per_param
    if _get(cfg, "critic.enable", False):
        critic = model_parameter_count(_get(cfg, "critic.model.path")) or params
        total += critic * per_param
    return int(total)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def check_checkpoint_dir(cfg: Any) -> None:
    """Refuse, before training, a ``trainer.default_local_dir`` that cannot take the next checkpoint.

    Skipped when the run saves nothing (``trainer.save_freq <= 0``). Writability is probed by creating and
    removing a temporary file in the folder (or its nearest existing parent): a read-only file system, a
    missing permission or a path under a file all fail here instead of at the first save. Free space must
    exceed :func:`estimate_checkpoint_bytes` x :data:`SAFETY_FACTOR` (when the model's size is known).
    """
    save_freq = _get(cfg, "trainer.save_freq", -1)
    if save_freq is None or int(save_freq) <= 0:
        return
    configured = _get(cfg, "trainer.default_local_dir")
    if configured is None:
        return
    root = checkpoint_root(configured)
    existing = _nearest_existing(root)
    fix = "Fix: trainer.default_local_dir=<a writable folder with room for the checkpoints>"
    if not os.path.isdir(existing):
        raise CheckpointError(
            f"trainer.default_local_dir={configured!r} cannot be created: {existing} is not a folder. {fix}"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".prefix_rft_write_probe_", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        where = root if existing == root else f"{existing} (the nearest existing parent of {root})"
        raise CheckpointError(
            f"trainer.default_local_dir={configured!r} is not writable: creating a file in {where} failed "
            f"with {err.strerror or err} (errno {errno.errorcode.get(err.errno, err.errno)}); the run would "
            f"train and then fail at its first checkpoint (trainer.save_freq={save_freq}). {fix}"
        ) from err
    need = estimate_checkpoint_bytes(cfg)
    if need is None:
        return
    free = shutil.disk_usage(existing).free
    if free < need * SAFETY_FACTOR:
        raise CheckpointError(
            f"trainer.default_local_dir={configured!r} has {_gb(free)} free on its file system ({existing}), "
            f"but one checkpoint of this model takes about {_gb(need)} (parameters of "
            f"actor_rollout_ref.model.path x bytes per parameter of actor.checkpoint.save_contents, plus "
            f"{SAFETY_FACTOR - 1:.0%} margin): the first save would fail with a full disk. {fix}, or free space"
        )


# ----------------------------------------------------------------------------- save


def _listing(folder: str) -> dict[str, int]:
    files = {}
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            if name == MARKER:
                continue
            full = os.path.join(dirpath, name)
            files[os.path.relpath(full, folder)] = os.path.getsize(full)
    return files


def write_marker(folder: str, step: int) -> str:
    """Write :data:`MARKER` into ``folder`` (atomically: temp file + rename) listing every file and size."""
    record = {"step": int(step), "files": _listing(folder), "time": time.time()}
    path = os.path.join(folder, MARKER)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def save_complete(folder: str, step: int, save: Callable[[], Any], *, write: bool = True) -> None:
    """Run ``save()`` (verl's ``_save_checkpoint``) for ``folder``; mark it complete, or remove what it left.

    On failure the partial ``folder`` is deleted (a resume never picks it, and its space is freed) and a
    :class:`CheckpointError` names the folder, the cause and the free space left. ``write=False`` (verl's
    ``async_save``: the files land later) skips the marker.
    """
    try:
        save()
    except Exception as err:  # noqa: BLE001 - re-raised with the path and the cause
        existed = os.path.isdir(folder)
        if existed:
            shutil.rmtree(folder, ignore_errors=True)
        base = _nearest_existing(folder)
        try:
            free = _gb(shutil.disk_usage(base).free)
        except OSError:
            free = "unknown"
        cause = f"{type(err).__name__}: {err}".strip()
        if len(cause) > 2000:
            cause = cause[:2000] + " ..."
        raise CheckpointError(
            f"saving the checkpoint of step {step} to {folder} failed ({cause}). Free space there: {free}. "
            + (
                "The partial folder was removed, so a resume uses the previous complete checkpoint. "
                if existed
                else ""
            )
            + "Fix: free space or point trainer.default_local_dir at a larger writable folder, then resume "
            "(trainer.resume_mode=auto)"
        ) from err
    if write and os.path.isdir(folder):
        write_marker(folder, step)


# ----------------------------------------------------------------------------- resume


def step_folders(root: str) -> dict[int, str]:
    """``{N: root/global_step_N}`` for every step folder under ``root``."""
    if not os.path.isdir(root):
        return {}
    out = {}
    for name in os.listdir(root):
        m = STEP_DIR.match(name)
        if m and os.path.isdir(os.path.join(root, name)):
            out[int(m.group(1))] = os.path.join(root, name)
    return out


def checkpoint_problem(folder: str, *, markers_expected: bool) -> str | None:
    """Why ``folder`` cannot be resumed from (``None`` when it is complete).

    With a :data:`MARKER`: every file it lists must exist with its size. Without one: an error when
    ``markers_expected`` (this run writes markers, so the save never finished), else (a checkpoint written
    by plain verl) it needs a non-empty ``actor/`` folder.
    """
    if not os.path.isdir(folder):
        return "the folder does not exist"
    marker = os.path.join(folder, MARKER)
    if os.path.isfile(marker):
        try:
            with open(marker) as f:
                files: Mapping[str, int] = json.load(f)["files"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"its {MARKER} is unreadable ({err})"
        for rel, size in sorted(files.items()):
            path = os.path.join(folder, rel)
            if not os.path.isfile(path):
                return f"{rel} is missing"
            if os.path.getsize(path) != size:
                return f"{rel} has {os.path.getsize(path)} bytes, {size} were saved"
        return None
    if markers_expected:
        return f"it has no {MARKER} (its save never finished)"
    actor = os.path.join(folder, "actor")
    if not os.path.isdir(actor) or not any(files for _, _, files in os.walk(actor)):
        return "actor/ is missing or empty"
    return None


def _read_tracker(root: str) -> tuple[int | None, str | None]:
    """(step, None) from the tracker file, or (None, why it is unusable), or (None, None) when absent."""
    path = os.path.join(root, TRACKER)
    if not os.path.exists(path):
        return None, None
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError as err:
        return None, f"{path} is unreadable ({err})"
    if not text.isdigit():
        return None, f"{path} does not hold a step number (it holds {text[:40]!r})"
    return int(text), None


def resolve_resume(root: str) -> str | None:
    """The ``global_step_<N>`` folder an automatic resume should load from ``root``, or None (from scratch).

    The step named by the tracker when its folder is complete; otherwise the newest complete folder, with a
    warning naming what was wrong. Raises :class:`CheckpointError` when step folders exist but none is
    complete while the tracker names one (resuming would fail, training from scratch would overwrite).
    """
    folders = step_folders(root)
    tracked, tracker_problem = _read_tracker(root)
    if (
        tracked is None
        and tracker_problem is None
        and not any(os.path.isfile(os.path.join(f, MARKER)) for f in folders.values())
    ):
        return None  # verl's own rule: no tracker, no resume (a plain-verl folder without markers)
    markers_expected = any(os.path.isfile(os.path.join(f, MARKER)) for f in folders.values())
    problems = []
    if tracker_problem:
        problems.append(tracker_problem)
    elif tracked is None:
        problems.append(f"{os.path.join(root, TRACKER)} is missing")
    elif tracked not in folders:
        problems.append(
            f"{os.path.join(root, TRACKER)} names step {tracked} but global_step_{tracked} is missing"
        )
    else:
        why = checkpoint_problem(folders[tracked], markers_expected=markers_expected)
        if why is None:
            return folders[tracked]
        problems.append(f"{folders[tracked]} is incomplete: {why}")
    candidates = sorted((s for s in folders if tracked is None or s < tracked), reverse=True)
    for step in candidates:
        why = checkpoint_problem(folders[step], markers_expected=markers_expected)
        if why is None:
            logger.warning(
                "Resuming from %s, the newest complete checkpoint: %s. Delete or repair the newer folder to "
                "silence this warning.",
                folders[step],
                "; ".join(problems),
            )
            return folders[step]
        problems.append(f"{folders[step]} is incomplete: {why}")
    raise CheckpointError(
        f"cannot resume from trainer.default_local_dir={root}: no complete checkpoint ("
        + "; ".join(problems)
        + "). Fix: remove the broken global_step_* folders and latest_checkpointed_iteration.txt to train "
        "from scratch, or set trainer.resume_mode=disable (from scratch) or trainer.resume_mode=resume_path "
        "with trainer.resume_from_path=<a complete global_step_* folder>"
    )


def check_resume_path(folder: str) -> None:
    """Refuse an explicit ``trainer.resume_from_path`` that is incomplete, naming what is wrong."""
    root = os.path.dirname(os.path.abspath(folder))
    markers_expected = any(os.path.isfile(os.path.join(f, MARKER)) for f in step_folders(root).values())
    why = checkpoint_problem(folder, markers_expected=markers_expected)
    if why is not None:
        raise CheckpointError(
            f"trainer.resume_from_path={folder} cannot be resumed from: {why}. Fix: point "
            "trainer.resume_from_path at a complete global_step_* folder (one with "
            f"{MARKER}), or set trainer.resume_mode=auto to take the newest complete one"
        )
