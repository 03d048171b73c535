"""The Prefix-RFT algorithm core: pure torch/numpy, no verl import.

One module per idea of the paper (arXiv 2507.01679):

- :mod:`~prefix_rft.core.schedule`  prefix-ratio schedule and sampler (sec. 3, A.2)
- :mod:`~prefix_rft.core.splice`    token-level splice of a demonstration prefix (sec. 3)
- :mod:`~prefix_rft.core.advantage` Dr.GRPO and prefix-aware group advantages (A.2)
- :mod:`~prefix_rft.core.entropy`   entropy-based clipping: top-k% demo tokens keep their advantage (sec. 3)
- :mod:`~prefix_rft.core.loss`      per-token PPO loss on prefix and continuation tokens (sec. 3)

Beyond the paper:

- :mod:`~prefix_rft.core.guidance`  per-prompt guidance: which prompts get their prefix, at which ratio

And :mod:`~prefix_rft.core.modes`: the names of the modes the modules above accept, without torch or numpy (what
:mod:`prefix_rft.config` validates against).
"""
