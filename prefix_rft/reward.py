"""Rule-based 0/1 answer reward (the paper's reward, sec. 4: math_verify on the final answer).

verl custom reward function: point verl at it with

    reward.custom_reward_function.path=pkg://prefix_rft.reward
    reward.custom_reward_function.name=compute_score

verl 0.9.1's reward loop (``NaiveRewardManager.run_single``) calls
``compute_score(data_source=, solution_str=, ground_truth=, extra_info=)`` in a thread-pool executor
(``loop.run_in_executor``) and accepts a float or a dict with a ``"score"`` key; every other key of the
dict becomes a per-sample ``reward_extra_info`` column (``acc`` is what verl's validation metrics
prefer, a string ``pred`` is used for majority voting).

What is scored: the content of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``) of the answer, where the
answer is the text after the last ``</think>`` when the response has one, else the whole response.
No box -> score 0. Multiple-choice benchmarks (``data_source`` in :data:`MULTIPLE_CHOICE_SOURCES`, or
``extra_info["answer_type"] == "multiple_choice"``) compare the boxed option letter with the ground truth.

Safety. math-verify bounds its own run time with ``signal.alarm``, which raises off the main thread,
so its timeouts are disabled (``parsing_timeout=None, timeout_seconds=None``). Two layers bound a call
instead. (1) Cheap guards reject known-explosive shapes BEFORE parsing (nested brace groups cost ~2x per
level, a 30-deep parenthesis nest ~10 s, ``9^{9^{9}}`` never finishes). (2) Every math-verify call runs in
a small pool of verifier subprocesses (:class:`VerifyPool`, ``python -m prefix_rft.reward
--verify-worker``, kept warm and reused) with a wall-clock bound, :data:`TIMEOUT_S` (1 s by default; per call
``compute_score(..., timeout_s=...)``, i.e. ``reward.custom_reward_function.reward_kwargs.timeout_s``): a
worker that overruns is killed (SIGKILL) and replaced, the answer scores 0 and ``timeout`` is 1 in the
returned dict (logged by verl per sample, and summed by the trainer as ``prefix_rft/reward_timeouts``).
Shapes the guards let through but that run for minutes holding the GIL (``9999999!``, ``99999!!``,
``((((9!)!)!)!)``, ``\\sum_{k=1}^{99999} k^{99999}``) are cut by (2). The caller's thread only waits on a
pipe, so the function is thread-safe and never stalls other threads; the pool serves concurrent callers.
The function never raises: any error scores 0 (and is counted in :data:`STATS`).
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

# ---- guards (every limit is a module constant so a user can tune it) --------------------------------
MAX_ANSWER_CHARS = 400
"""Longest boxed content that is parsed; longer content scores 0."""
MAX_BRACE_DEPTH = 5
"""Deepest ``{...}`` nesting inside the box (math-verify's parse time doubles per level)."""
MAX_GROUP_DEPTH = 10
"""Deepest nesting of ``{}``, ``()`` and ``[]`` together."""
MAX_NUMBER_DIGITS = 60
"""Longest digit run of a numeric literal."""
MAX_EXPONENT_DIGITS = 5
"""Longest literal exponent after ``^`` or ``**`` (10^{99999} evaluates in ~0.2 s; 10^{10^7} in ~9 s)."""
MAX_POWERS = 8
"""Most ``^``/``**`` operators in one answer."""

TIMEOUT_S = 1.0
"""Bound on one math-verify equivalence check: CPU seconds of the verifier process (wall-clock seconds where
the process's CPU time cannot be read); overrun = score 0, ``timeout`` 1."""
MAX_WAIT_S = 60.0
"""Wall-clock cap of one check however busy the machine is (the verifier is killed past it, ``timeout`` 1)."""
POOL_SIZE = int(os.environ.get("PREFIX_RFT_REWARD_WORKERS", "4"))
"""Verifier processes per reward process (env ``PREFIX_RFT_REWARD_WORKERS``); callers beyond it queue."""

MULTIPLE_CHOICE_SOURCES = frozenset({"arc_c", "gpqa_diamond", "mmlu_pro"})
"""``data_source`` values scored as multiple choice (the OOD sets written by ``prefix_rft.data``)."""

STATS: Counter = Counter()
"""Process-wide counts of why answers scored 0 (``no_box``, ``guard:<name>``, ``error``...)."""
_STATS_LOCK = threading.Lock()

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_DIGIT_RUN = re.compile(r"\d{" + str(MAX_NUMBER_DIGITS + 1) + ",}")
_EXPONENT = re.compile(r"(?:\^|\*\*)\s*(\{)?\s*([-+]?\d+)")
_LETTER = re.compile(r"^\(?([A-J])\)?(?:[.:)\s]|$)")
_LONE_LOWER_LETTER = re.compile(r"^\(?([a-j])\)?$")
_CHOICE_PREFIX = re.compile(r"^(?:the\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:=]?\s*", re.IGNORECASE)
_HEDGE = re.compile(r"^\(?[A-Ja-j]\)?\s*(?:,|;|/|&|\\&|\band\b|\bor\b)\s*\(?[A-Ja-j]\)?(?:[.:),;\s]|$)")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")


def _count(reason: str) -> None:
    with _STATS_LOCK:
        STATS[reason] += 1


def answer_segment(solution_str: str) -> str:
    """The part of a response that holds the final answer: the text after the last ``</think>``, if any."""
    cut = solution_str.rfind("</think>")
    return solution_str if cut < 0 else solution_str[cut + len("</think>") :]


def last_boxed(text: str, max_chars: int = MAX_ANSWER_CHARS) -> str | None:
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` in ``text`` (balanced braces), else None.

    Runs in O(len(text) + max_chars): the box is located with ``rfind`` and its content scanned at most
    ``max_chars`` characters; a longer or unterminated box returns None. ``\\boxed 5`` (no braces)
    returns the next whitespace-delimited token.
    """
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    cmd = "\\boxed" if text.startswith("\\boxed", start) else "\\fbox"
    i = start + len(cmd)
    n = len(text)
    while i < n and text[i] == " ":
        i += 1
    if i >= n:
        return None
    if text[i] != "{":
        if not text[i - 1].isspace():  # e.g. "\boxedx": not a box command
            return None
        token = re.match(r"[^\s$]+", text[i : i + max_chars + 1])
        return token.group(0) if token and len(token.group(0)) <= max_chars else None
    depth = 0
    j = i
    end_limit = min(n, i + max_chars + 2)
    while j < end_limit:
        ch = text[j]
        if ch == "\\":  # an escaped char (\{, \}, \\) never changes the depth
            j += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
        j += 1
    return None


def guard_reason(expr: str) -> str | None:
    """Why ``expr`` is unsafe to hand to math-verify (a short reason), or None when it is safe."""
    if len(expr) > MAX_ANSWER_CHARS:
        return "too_long"
    brace = group = max_brace = max_group = 0
    k = 0
    while k < len(expr):
        ch = expr[k]
        if ch == "\\":  # \{ \} are literal braces (sets), not groups
            k += 2
            continue
        if ch == "{":
            brace += 1
            group += 1
        elif ch == "}":
            brace -= 1
            group -= 1
        elif ch in "([":
            group += 1
        elif ch in ")]":
            group -= 1
        max_brace, max_group = max(max_brace, brace), max(max_group, group)
        k += 1
    if max_brace > MAX_BRACE_DEPTH:
        return "brace_depth"
    if max_group > MAX_GROUP_DEPTH:
        return "group_depth"
    if _DIGIT_RUN.search(expr):
        return "digits"
    n_powers = expr.count("^") + expr.count("**")
    if n_powers > MAX_POWERS:
        return "powers"
    for match in _EXPONENT.finditer(expr):
        if len(match.group(2).lstrip("+-")) > MAX_EXPONENT_DIGITS:
            return "exponent"
    if _has_power_tower(expr):
        return "power_tower"
    return None


def _has_power_tower(expr: str) -> bool:
    """True when an exponent itself contains a power (``a^{b^c}``, ``a^b^c``, ``a**b**c``)."""
    s = expr.replace("**", "^")
    for k, ch in enumerate(s):
        if ch != "^":
            continue
        j = k + 1
        while j < len(s) and s[j] == " ":
            j += 1
        if j < len(s) and s[j] == "{":
            depth = 0
            for m in range(j, len(s)):
                if s[m] == "{":
                    depth += 1
                elif s[m] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                elif s[m] == "^":
                    return True
        elif j < len(s):  # a bare exponent is one token: a number, a \command or one character
            m = j + 1
            if s[j].isdigit():
                while m < len(s) and (s[m].isdigit() or s[m] == "."):
                    m += 1
            elif s[j] == "\\":
                while m < len(s) and s[m].isalpha():
                    m += 1
            if s[m:].lstrip().startswith("^"):
                return True
    return False


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once per process that its timeout is off: here that is deliberate (see guards)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


_MV_CACHE: tuple | None = None


def _math_verify():
    """Import math-verify lazily (keeps ``import prefix_rft.reward`` cheap) and build the parse configs."""
    global _MV_CACHE
    if _MV_CACHE is None:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropTimeoutDisabledWarning())
        config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
        _MV_CACHE = (parse, verify, config)
    return _MV_CACHE


def _verify_in_process(pred: str, gold: str) -> bool:
    """math-verify equivalence of two final answers, in this process, timeouts off (runs in a worker)."""
    parse, verify, config = _math_verify()
    gold_parsed = parse("\\boxed{" + gold + "}", extraction_config=config, parsing_timeout=None)
    pred_parsed = parse("\\boxed{" + pred + "}", extraction_config=config, parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _worker_loop(stdin=None, stdout=None) -> None:
    """Verifier process (``python -m prefix_rft.reward --verify-worker``): one JSON ``[pred, gold]`` per line
    in, one line out: ``1``/``0``, or ``E <error>``. Says ``ready`` once math-verify is imported."""
    import json
    import sys

    stdin, stdout = stdin or sys.stdin.buffer, stdout or sys.stdout.buffer
    _math_verify()
    # math-verify's first parse builds its grammars and sympy's first simplification fills its caches
    # (~0.2 s of CPU): done here, outside any check's bound
    _verify_in_process("\\frac{1}{2}", "0.5")
    _verify_in_process("(x+1)^2", "x^2+2x+1")
    stdout.write(b"ready\n")
    stdout.flush()
    for line in stdin:
        try:
            pred, gold = json.loads(line)
            reply = b"1\n" if _verify_in_process(pred, gold) else b"0\n"
        except Exception as err:  # noqa: BLE001 - reported to the caller, which scores 0
            reply = ("E " + repr(err).replace("\n", " ") + "\n").encode()
        stdout.write(reply)
        stdout.flush()


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc/<pid>/stat``; psutil elsewhere), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15 of stat(5))
    except (OSError, IndexError, ValueError):
        pass
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except Exception:  # noqa: BLE001 - no way to read it: the caller bounds wall-clock time instead
        return None


class VerifyTimeout(Exception):
    """A math-verify check overran its wall-clock bound (the worker was killed)."""


class _Worker:
    """One verifier subprocess speaking the line protocol of :func:`_worker_loop`."""

    def __init__(self, start_timeout: float):
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefix_rft.reward", "--verify-worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
        )
        self._buf = b""
        if self.readline(start_timeout) != b"ready":
            self.kill()
            raise RuntimeError(
                f"the reward verifier process (python -m prefix_rft.reward --verify-worker) did not start "
                f"within {start_timeout} s; check that math-verify is installed in {sys.executable}"
            )

    def readline(self, timeout: float) -> bytes | None:
        """The next line (without newline), or None when ``timeout`` passes first or the process died."""
        import selectors
        import time

        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    return None
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the verifier process has used, or None where it cannot be read."""
        return process_cpu_seconds(self.proc.pid)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()


class VerifyPool:
    """Up to ``size`` verifier subprocesses; a check that overruns its bound kills its worker.

    All ``size`` workers start (in background threads) on the first check; a start imports math-verify
    (~2 s), outside any check's bound. Workers are reused; a killed worker is replaced at once in the
    background, so the next check usually finds a warm one. Thread-safe: each worker serves one caller
    at a time; callers beyond ``size`` wait for a free worker (that wait is not part of the bound).
    """

    START_TIMEOUT_S = 120.0

    def __init__(self, size: int = POOL_SIZE):
        self.size = max(int(size), 1)
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._lock = threading.Lock()
        self._started = 0
        self.kills = 0

    def _start_one(self) -> None:
        try:
            self._idle.put(_Worker(self.START_TIMEOUT_S))
        except Exception as err:  # noqa: BLE001 - handed to the waiting caller, which scores 0
            with self._lock:
                self._started -= 1
            self._idle.put(err)

    def _top_up(self) -> None:
        """Start (in background threads) as many workers as are missing from ``size``."""
        with self._lock:
            missing, self._started = self.size - self._started, self.size
        for _ in range(missing):
            threading.Thread(target=self._start_one, daemon=True, name="prefix_rft_verify_start").start()

    def _acquire(self) -> _Worker:
        self._top_up()
        worker = self._idle.get()
        if isinstance(worker, Exception):
            raise worker
        return worker

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._started -= 1
        self._top_up()

    def verify(self, pred: str, gold: str, timeout: float, max_wait: float = MAX_WAIT_S) -> bool:
        """math-verify equivalence within ``timeout`` CPU seconds of the verifier; :class:`VerifyTimeout` past it.

        The bound is on the verifier's own work, not on the caller's wait: on a busy machine the verifier gets
        a fraction of a core, so its answer may take many wall-clock seconds while it has used little CPU;
        it is killed only once its CPU time for this check passes ``timeout`` (or the wait passes
        ``max_wait`` seconds). Where CPU time is unreadable, ``timeout`` bounds the wall-clock wait.
        """
        import json
        import time

        worker = self._acquire()
        try:
            cpu_start = worker.cpu_seconds()
            started = time.monotonic()
            worker.proc.stdin.write((json.dumps([pred, gold]) + "\n").encode())
            while True:
                cpu_used = 0.0 if cpu_start is None else (worker.cpu_seconds() or cpu_start) - cpu_start
                # CPU time never runs faster than the wall clock: wait at least the CPU budget left
                wait = max(timeout - cpu_used, 0.01) if cpu_start is not None else timeout
                wait = min(wait, max(max_wait - (time.monotonic() - started), 0.0))
                reply = worker.readline(wait)
                if reply is not None or worker.proc.poll() is not None:
                    break
                cpu_used = 0.0 if cpu_start is None else (worker.cpu_seconds() or cpu_start) - cpu_start
                if cpu_start is None or cpu_used >= timeout or time.monotonic() - started >= max_wait:
                    break
        except BaseException:
            self._replace(worker)
            raise
        if reply is None and worker.proc.poll() is not None:
            self._replace(worker)
            raise RuntimeError(f"the verifier process died (exit code {worker.proc.returncode})")
        if reply is None:
            self.kills += 1
            self._replace(worker)
            raise VerifyTimeout(
                f"math-verify ran over {timeout} s"
                + (" of CPU time" if cpu_start is not None else "")
                + f" ({time.monotonic() - started:.1f} s waited)"
            )
        self._idle.put(worker)
        if reply.startswith(b"E"):
            raise RuntimeError(f"math-verify failed in the verifier process: {reply[2:].decode()}")
        return reply == b"1"

    def wait_warm(self, timeout: float = START_TIMEOUT_S) -> bool:
        """Start the workers and wait until all ``size`` are idle (tests, benchmarks); False on timeout."""
        import time

        self._top_up()
        deadline = time.monotonic() + timeout
        while self._idle.qsize() < self.size:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        """Stop every idle worker (tests)."""
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                return
            worker.kill()
            with self._lock:
                self._started -= 1


POOL = VerifyPool()


def math_equal(pred: str, gold: str, timeout_s: float | None = None) -> bool:
    """math-verify equivalence of two final answers (box contents), bounded by ``timeout_s`` (thread safe).

    Both sides are wrapped as ``\\boxed{...}`` so they are normalised the same way. Equal normalised
    strings return True at once; anything else runs in :data:`POOL` and raises :class:`VerifyTimeout` after
    ``timeout_s`` (default :data:`TIMEOUT_S`). Callers must have checked :func:`guard_reason` on both.
    """
    if fast_equal(pred, gold):
        return True
    return POOL.verify(pred, gold, TIMEOUT_S if timeout_s is None else float(timeout_s))


def fast_equal(pred: str, gold: str) -> bool:
    """In-process match, no math-verify: equal normalised strings, or equal plain numbers.

    Numbers: integers, decimals, ``a/b`` and ``\\frac{a}{b}`` (``\\dfrac``, ``\\tfrac``), with a sign, as
    exact fractions (``0.5`` = ``\\frac{1}{2}`` = ``1/2``). Only a match is decided here: anything else goes
    to math-verify, so a busy machine never turns a plainly correct answer into a timeout.
    """
    a, b = _normalise(pred), _normalise(gold)
    if a == b:
        return True
    x, y = _as_number(a), _as_number(b)
    return x is not None and x == y


def _normalise(s: str) -> str:
    s = _TEXT_WRAPPER.sub(r"\1", s)
    s = re.sub(r"\s+", "", s).rstrip(".").replace("\\!", "").replace("\\,", "")
    return s.strip("$")


_DECIMAL = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_NUMBER = re.compile(rf"^{_DECIMAL}$")
_FRACTION = re.compile(
    rf"^([-+]?)(?:\\[dt]?frac\{{({_DECIMAL})\}}\{{({_DECIMAL})\}}|({_DECIMAL})/({_DECIMAL}))$"
)


def _as_number(s: str):
    """``s`` (normalised) as an exact :class:`fractions.Fraction` when it is a plain number, else None."""
    from fractions import Fraction

    if len(s) > MAX_NUMBER_DIGITS:
        return None
    if _NUMBER.match(s):
        return Fraction(s)
    m = _FRACTION.match(s)
    if not m:
        return None
    num, den = (m.group(2), m.group(3)) if m.group(2) is not None else (m.group(4), m.group(5))
    if Fraction(den) == 0:
        return None
    value = Fraction(num) / Fraction(den)
    return -value if m.group(1) == "-" else value


def choice_letter(content: str) -> str | None:
    """The option letter (A-J) of a boxed multiple-choice answer, else None.

    Read as ``C``: ``C``, ``(C)``, ``\\text{C}``, ``{C}``, ``C. option text``, ``C) text``, ``C: text``,
    ``Option C``, ``Answer: C`` and a lone lower-case ``c`` / ``(c)``. Hedges naming two letters
    (``C and D``, ``(C) or (D)``, ``C, D``) and anything else read as no letter (score 0).
    """
    s = _TEXT_WRAPPER.sub(r"\1", content).strip().strip("$").strip()
    while len(s) >= 2 and s[0] == "{" and s[-1] == "}":
        s = s[1:-1].strip()
    s = _CHOICE_PREFIX.sub("", s, count=1)
    if _HEDGE.match(s):
        return None
    m = _LETTER.match(s) or _LONE_LOWER_LETTER.match(s)
    return m.group(1).upper() if m else None


def _gold_answer(ground_truth: Any) -> str:
    if hasattr(ground_truth, "tolist") and not isinstance(ground_truth, str):  # numpy scalar / array
        ground_truth = ground_truth.tolist()
    if isinstance(ground_truth, (list, tuple)):
        ground_truth = ground_truth[0] if ground_truth else None
    if ground_truth is None or isinstance(ground_truth, bool):
        return ""
    gold = str(ground_truth).strip()
    if "\\boxed" in gold or "\\fbox" in gold:
        boxed = last_boxed(gold, max_chars=max(len(gold), MAX_ANSWER_CHARS))
        gold = boxed if boxed is not None else gold
    if len(gold) >= 2 and gold[0] == "$" and gold[-1] == "$":
        gold = gold.strip("$")
    return gold


def score_answer(
    solution_str: str, ground_truth: Any, multiple_choice: bool = False, timeout_s: float | None = None
) -> dict:
    """Score one response: ``{"score": 0.0|1.0, "acc": bool, "pred": str, "timeout": 0|1}``.

    Never raises; a response without a box, with an unsafe answer (see the guards) or one that errors
    scores 0 (``pred`` holds the extracted box content, ``""`` when there is none).
    """
    pred = ""
    try:
        if not isinstance(solution_str, str):
            _count("not_a_string")
            return _result(False, "")
        content = last_boxed(answer_segment(solution_str))
        if content is None:
            _count("no_box")
            return _result(False, "")
        pred = content.strip()
        gold = _gold_answer(ground_truth)
        if not pred or not gold:
            _count("empty")
            return _result(False, pred)
        if multiple_choice:
            letter = choice_letter(pred)
            gold_letter = choice_letter(gold) or gold.upper()
            return _result(letter is not None and letter == gold_letter, pred)
        for side, expr in (("pred", pred), ("gold", gold)):
            reason = guard_reason(expr)
            if reason is not None:
                _count(f"guard:{side}:{reason}")
                return _result(False, pred)
        return _result(math_equal(pred, gold, timeout_s), pred)
    except VerifyTimeout:
        _count("timeout")
        return _result(False, pred, timeout=True)
    except Exception:  # noqa: BLE001 - a reward function must never crash the trainer
        _count("error")
        logger.debug("reward error", exc_info=True)
        return _result(False, pred)


def _result(correct: bool, pred: str, timeout: bool = False) -> dict:
    return {"score": 1.0 if correct else 0.0, "acc": bool(correct), "pred": pred, "timeout": int(timeout)}


def is_multiple_choice(data_source: Any, extra_info: Any) -> bool:
    """Whether a row is scored as multiple choice (by ``data_source`` or ``extra_info["answer_type"]``)."""
    if isinstance(extra_info, Mapping) and extra_info.get("answer_type") == "multiple_choice":
        return True
    return str(data_source) in MULTIPLE_CHOICE_SOURCES


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    timeout_s: float | None = None,
    **kwargs: Any,
) -> dict:
    """verl custom reward entry point (signature of verl 0.9.1's reward loop); see the module docstring.

    Returns ``{"score": float (0.0 or 1.0), "acc": bool, "pred": str, "timeout": 0|1}``. ``timeout_s``
    bounds the equivalence check (default :data:`TIMEOUT_S`; set it with
    ``reward.custom_reward_function.reward_kwargs.timeout_s``).
    """
    return score_answer(
        solution_str,
        ground_truth,
        multiple_choice=is_multiple_choice(data_source, extra_info),
        timeout_s=timeout_s,
    )


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--verify-worker"]:
        _worker_loop()
