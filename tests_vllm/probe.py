"""Test-only recorder of the Prefix-RFT rollout as verl's vLLM server serves it (``make test-vllm``).

Imported in every verl process through ``VERL_USE_EXTERNAL_MODULES`` (the tests add it after
``verl_cpu.plugin``); inert unless ``PREFIX_RFT_PROBE_DIR`` is set. In the agent-loop workers it wraps
:meth:`prefix_rft.agent_loop.PrefixRFTAgentLoop.run` and records, per sample, one JSON line in
``$PREFIX_RFT_PROBE_DIR/<pid>.jsonl``: the prompt and response token ids and log-probs the loop returned, its
prefix length, the row's split and step, and every call it made to the rollout server (prompt ids sent,
``max_tokens``, token ids and log-probs returned, the weights version the server stamped).
Nothing here changes what is generated.
"""

from __future__ import annotations

import json
import os

PROBE_DIR_ENV = "PREFIX_RFT_PROBE_DIR"


class _RecordingClient:
    """Forwards to the real server manager; appends each ``generate`` call and its result to ``calls``."""

    def __init__(self, inner, calls: list):
        self.inner, self.calls = inner, calls

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        out = await self.inner.generate(
            request_id, prompt_ids=prompt_ids, sampling_params=sampling_params, **kwargs
        )
        extra = dict(out.extra_fields or {})
        self.calls.append(
            {
                "prompt_ids": [int(t) for t in prompt_ids],
                "max_tokens": sampling_params.get("max_tokens", sampling_params.get("max_new_tokens")),
                "temperature": sampling_params.get("temperature"),
                "logprobs": sampling_params.get("logprobs"),
                "token_ids": [int(t) for t in out.token_ids],
                "log_probs": None if out.log_probs is None else [float(x) for x in out.log_probs],
                "min_global_steps": extra.get("min_global_steps"),
                "max_global_steps": extra.get("max_global_steps"),
            }
        )
        return out


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _install() -> None:
    from prefix_rft.agent_loop import PrefixRFTAgentLoop

    if getattr(PrefixRFTAgentLoop.run, "_prefix_rft_probe", False):
        return
    original = PrefixRFTAgentLoop.run

    async def run(self, sampling_params, **kwargs):
        calls: list = []
        real = self.server_manager
        self.server_manager = _RecordingClient(real, calls)
        try:
            out = await original(self, sampling_params, **kwargs)
        finally:
            self.server_manager = real
        extra_info = kwargs.get("extra_info") or {}
        record = {
            "global_steps": int(_plain(kwargs.get("global_steps", 0))),
            "session_id": None if kwargs.get("session_id") is None else int(_plain(kwargs["session_id"])),
            "split": extra_info.get("split") if hasattr(extra_info, "get") else None,
            "prompt_ids": [int(t) for t in out.prompt_ids],
            "response_ids": [int(t) for t in out.response_ids],
            "response_logprobs": None
            if out.response_logprobs is None
            else [float(x) for x in out.response_logprobs],
            "prefix_len": int(out.prefix_len),
            "response_length": int(self.response_length),
            "calls": calls,
        }
        path = os.path.join(os.environ[PROBE_DIR_ENV], f"{os.getpid()}.jsonl")
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
        return out

    run._prefix_rft_probe = True
    PrefixRFTAgentLoop.run = run


if os.environ.get(PROBE_DIR_ENV):
    _install()
