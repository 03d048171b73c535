"""The prefix_rft config block (defaults = the paper's, validation messages) and the core's isolation from verl."""

import subprocess
import sys
import textwrap

import pytest

from prefix_rft.config import PrefixRFTConfig, PrefixRFTConfigError, from_dict


def test_defaults_are_the_papers():
    cfg = from_dict(None, rollout_n=8)
    assert cfg.num_prefixed == 1 and cfg.demo_key == "demonstrations"
    r = cfg.ratio
    assert (r.schedule, r.low_start, r.low_end, r.high, r.decay_steps, r.sampler) == (
        "cosine",
        0.95,
        0.05,
        0.95,
        500,
        "uniform",
    )
    assert (cfg.entropy_clip.enable, cfg.entropy_clip.top_ratio, cfg.entropy_clip.scope) == (
        True,
        0.2,
        "mini_batch",
    )
    assert (cfg.loss.is_mode, cfg.loss.luffy_gamma, cfg.loss.sft_coef, cfg.loss.entropy_bonus_on_prefix) == (
        "ppo",
        0.1,
        0.0,
        False,
    )
    assert (cfg.advantage.mode, cfg.advantage.norm_by_std) == ("group", False)


def test_nested_overrides_apply():
    cfg = from_dict(
        {
            "num_prefixed": 2,
            "ratio": {"schedule": "linear", "low_start": 0.8, "high": 0.8},
            "loss": {"is_mode": "luffy"},
        },
        8,
    )
    assert cfg.num_prefixed == 2 and cfg.ratio.schedule == "linear" and cfg.ratio.high == 0.8
    assert cfg.ratio.low_end == 0.05 and cfg.loss.is_mode == "luffy"


def test_omegaconf_block():
    from omegaconf import OmegaConf

    block = OmegaConf.create({"entropy_clip": {"top_ratio": 0.5}})
    assert from_dict(block).entropy_clip.top_ratio == 0.5


@pytest.mark.parametrize(
    "block,key",
    [
        ({"num_prefixed": 9}, "prefix_rft.num_prefixed=9"),
        ({"num_prefixed": -1}, "prefix_rft.num_prefixed=-1"),
        ({"ratio": {"schedule": "exp"}}, "prefix_rft.ratio.schedule='exp'"),
        ({"ratio": {"high": 1.5}}, "prefix_rft.ratio.high=1.5"),
        ({"ratio": {"low_start": 0.99, "high": 0.9}}, "prefix_rft.ratio.low_start=0.99"),
        ({"ratio": {"decay_steps": 0}}, "prefix_rft.ratio.decay_steps=0"),
        ({"ratio": {"sampler": "normal"}}, "prefix_rft.ratio.sampler"),
        ({"entropy_clip": {"top_ratio": 0.0}}, "prefix_rft.entropy_clip.top_ratio=0.0"),
        ({"entropy_clip": {"scope": "rank"}}, "prefix_rft.entropy_clip.scope"),
        ({"loss": {"is_mode": "sft"}}, "prefix_rft.loss.is_mode"),
        ({"loss": {"sft_coef": -1}}, "prefix_rft.loss.sft_coef"),
        ({"advantage": {"mode": "rloo"}}, "prefix_rft.advantage.mode"),
        # wrong types (e.g. from the command line) fail with the key, never a TypeError
        ({"num_prefixed": True}, "prefix_rft.num_prefixed=True"),
        ({"seed": "abc"}, "prefix_rft.seed='abc'"),
        ({"seed": 1.5}, "prefix_rft.seed=1.5"),
        ({"ratio": {"alpha": "abc"}}, "prefix_rft.ratio.alpha='abc'"),
        ({"ratio": {"decay_steps": True}}, "prefix_rft.ratio.decay_steps=True"),
        ({"ratio": {"min_prefix_tokens": False}}, "prefix_rft.ratio.min_prefix_tokens=False"),
        ({"ratio": {"high": "x"}}, "prefix_rft.ratio.high='x'"),
        ({"entropy_clip": {"top_ratio": None}}, "prefix_rft.entropy_clip.top_ratio=None"),
        ({"loss": {"luffy_gamma": "x"}}, "prefix_rft.loss.luffy_gamma='x'"),
        ({"val_seed": "abc"}, "prefix_rft.val_seed='abc'"),
        ({"val_seed": 0.5}, "prefix_rft.val_seed=0.5"),
    ],
)
def test_bad_values_name_the_key(block, key):
    with pytest.raises(PrefixRFTConfigError) as err:
        from_dict(block, rollout_n=8)
    assert key in str(err.value) and "expected" in str(err.value)


def test_num_prefixed_bounded_by_rollout_n_message():
    with pytest.raises(PrefixRFTConfigError, match=r"at most actor_rollout_ref\.rollout\.n=4"):
        from_dict({"num_prefixed": 5}, rollout_n=4)


def test_unknown_keys_are_rejected():
    with pytest.raises(PrefixRFTConfigError, match=r"unknown key prefix_rft\.ratio\.lowstart"):
        from_dict({"ratio": {"lowstart": 0.5}})
    with pytest.raises(PrefixRFTConfigError, match=r"prefix_rft\.loss must be a mapping"):
        from_dict({"loss": 3})


def test_validate_returns_self():
    cfg = PrefixRFTConfig()
    assert cfg.validate(8) is cfg


def test_core_imports_without_verl():
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "verl" or name.startswith("verl."):
                    raise ImportError("verl is blocked in this test")
        sys.meta_path.insert(0, Block())
        import prefix_rft.core as core, prefix_rft.config
        names = [m.name for m in pkgutil.iter_modules(core.__path__)]
        for n in names:
            importlib.import_module("prefix_rft.core." + n)
        assert not any(m == "verl" or m.startswith("verl.") for m in sys.modules), "verl got imported"
        print(sorted(names))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['advantage', 'entropy', 'guidance', 'loss', 'modes', 'schedule', 'splice']"
