"""Token-level splice of a demonstration prefix into a rollout (paper sec. 3 and A.2).

A hybrid rollout's response is ``demo_ids[:L] + continuation``: the prefix is spliced as token ids,
never decoded and re-encoded (re-tokenising can change the boundary token), and the policy continues
it within the remaining response budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Splice:
    """Result of :func:`splice_prefix`.

    Attributes:
        prefix_ids: the demonstration tokens the response starts with (``L`` of them).
        continuation_budget: how many tokens the policy may still generate (``budget - L``).
        truncated: the prefix the ratio asked for did not fit in the response budget and was cut.
    """

    prefix_ids: list[int]
    continuation_budget: int
    truncated: bool


def prefix_length(
    demo_len: int, ratio: float, response_budget: int, *, min_prefix_tokens: int
) -> tuple[int, bool]:
    """Number of demo tokens ``L`` a hybrid rollout starts with, and whether the budget cut it.

    Paper A.2: ``L = floor(ratio * |demo|)``, clamped (authors' code) to ``[min_prefix_tokens, |demo| - 1]``
    so the policy always writes at least one token (``min_prefix_tokens``: see
    ``PrefixRFTConfig.ratio.min_prefix_tokens``). ``ratio >= 1.0`` means the whole demonstration
    (LUFFY-style), end token included, with nothing left to generate. Finally ``L <= response_budget``.
    """
    if demo_len <= 0:
        return 0, False
    response_budget = max(response_budget, 0)
    if ratio >= 1.0:
        length = demo_len
    else:
        length = math.floor(max(ratio, 0.0) * demo_len)
        length = min(max(length, min_prefix_tokens), demo_len - 1)
    length = max(length, 0)
    if length > response_budget:
        return response_budget, True
    return length, False


def splice_prefix(
    demo_ids: Sequence[int] | None,
    ratio: float,
    response_budget: int,
    *,
    min_prefix_tokens: int,
    context_room: int | None = None,
) -> Splice:
    """Prefix ids and continuation budget of one hybrid rollout (paper sec. 3).

    ``ratio >= 1.0`` (LUFFY-style) takes the whole demonstration, its end token included, and leaves a
    continuation budget of 0: no generation is needed.

    ``context_room`` is what the server's context window leaves after the prompt (window - prompt
    tokens; None = unbounded). The prefix is cut to ``context_room - 1`` so the server can always write at
    least one token (a request with no room fails inside the server and drops the prompt group), the cut
    counts as ``truncated``, and the continuation budget never exceeds the room left after the prefix.

    An empty or missing demonstration yields no prefix and the full budget: it never raises mid-training.
    """
    demo = list(demo_ids) if demo_ids is not None else []
    length, truncated = prefix_length(len(demo), ratio, response_budget, min_prefix_tokens=min_prefix_tokens)
    if context_room is not None and length > max(context_room - 1, 0):
        length, truncated = max(context_room - 1, 0), True
    # The whole demonstration ends with its end token: there is nothing left for the policy to write.
    whole_demo = length > 0 and ratio >= 1.0 and length == len(demo)
    budget = 0 if whole_demo else max(response_budget - length, 0)
    if context_room is not None:
        budget = min(budget, max(context_room - length, 0))
    return Splice(prefix_ids=demo[:length], continuation_budget=budget, truncated=truncated)
