"""Shared test set-up: eight fake CPU devices for sharding tests, float32 matmuls."""

import os

# Must happen before jax is imported anywhere: gives the sharding tests 8 host devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax  # noqa: E402

# Parity tests compare against PyTorch fp32; XLA's CPU default is already full precision, make it explicit.
jax.config.update("jax_default_matmul_precision", "highest")


import pathlib  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny_fit_config():
  """configs/tiny.py shrunk to a few steps on a slice of the builtin corpus: `tiny_fit_config(steps)` -> ConfigDict."""
  from gptjax import workflow  # pylint: disable=g-import-not-at-top

  def make(steps: int = 4):
    config = workflow.load_config(ROOT / "configs" / "tiny.py")
    config.train.steps = steps
    config.train.eval_every = steps
    config.train.log_every = 2
    config.data.builtin_max_bytes = 200_000
    config.opt.warmup_steps = 1
    return config

  return make
