"""The launch cap of the benchmark harness (:func:`benchmarks.launch.launch_slot`): at most N trainer launches at
once across threads and processes that share a lock folder; none without the two variables; a dead holder's
slot is free again."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmarks.launch import LAUNCH_LOCK_DIR_ENV, LAUNCH_SLOTS_ENV, launch_slot

ROOT = Path(__file__).resolve().parents[1]


def _most_at_once(env: dict[str, str], holders: int, hold_s: float = 0.4) -> int:
    """Start ``holders`` threads that each hold a slot for ``hold_s``; the most that held one at the same time."""
    lock, now, most = threading.Lock(), [0], [0]

    def hold() -> None:
        with launch_slot(env):
            with lock:
                now[0] += 1
                most[0] = max(most[0], now[0])
            time.sleep(hold_s)
            with lock:
                now[0] -= 1

    threads = [threading.Thread(target=hold) for _ in range(holders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return most[0]


def test_threads_share_the_slots(tmp_path):
    env = {LAUNCH_SLOTS_ENV: "1", LAUNCH_LOCK_DIR_ENV: str(tmp_path / "locks")}
    assert _most_at_once(env, holders=3) == 1
    assert _most_at_once({**env, LAUNCH_SLOTS_ENV: "2"}, holders=3) == 2


def test_no_cap_without_both_variables(tmp_path):
    assert _most_at_once({}, holders=3) == 3
    with pytest.raises(ValueError, match="BENCH_LAUNCH_SLOTS='two': expected a whole number"):
        with launch_slot({LAUNCH_SLOTS_ENV: "two", LAUNCH_LOCK_DIR_ENV: str(tmp_path)}):
            pass
    assert _most_at_once({LAUNCH_SLOTS_ENV: "1"}, holders=3) == 3  # no folder: no cap
    assert _most_at_once({LAUNCH_SLOTS_ENV: "0", LAUNCH_LOCK_DIR_ENV: str(tmp_path)}, holders=3) == 3


def test_a_killed_holder_frees_its_slot(tmp_path):
    env = {LAUNCH_SLOTS_ENV: "1", LAUNCH_LOCK_DIR_ENV: str(tmp_path / "locks")}
    code = (
        "import sys, time\n"
        "from benchmarks.launch import launch_slot\n"
        f"with launch_slot({env!r}):\n"
        "    print('holding', flush=True)\n"
        "    time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        waited = threading.Event()

        def take() -> None:
            with launch_slot(env):
                waited.set()

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        assert not waited.wait(1.5), "the slot was taken while another process held it"
    finally:
        holder.kill()
        holder.wait()
    assert waited.wait(30), "the slot of a killed holder was not freed"
