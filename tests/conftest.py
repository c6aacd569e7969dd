"""Shared test set-up: eight fake CPU devices for sharding tests, float32 matmuls; the tiny-model fixtures; the
`gpu` marker's skip on machines without one."""

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
import shutil  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _nvidia_gpus() -> list[str]:
  """The `nvidia-smi -L` lines naming a GPU (none without the tool). Not through jax: this process is CPU-only."""
  if shutil.which("nvidia-smi") is None:
    return []
  try:
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=False)
  except (OSError, subprocess.SubprocessError):
    return []
  return [line for line in listed.stdout.splitlines() if line.startswith("GPU ")]


def pytest_collection_modifyitems(config, items):
  """Skips `gpu` tests where no GPU is visible; plain `pytest` still runs them where one is."""
  del config
  gpu_items = [item for item in items if item.get_closest_marker("gpu")]
  if gpu_items and not _nvidia_gpus():
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU: `nvidia-smi -L` lists none")
    for item in gpu_items:
      item.add_marker(skip)


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


@pytest.fixture(scope="session")
def tiny_model_config():
  """`tiny_model_config(arch='gpt2', **overrides)` -> the tests' tiny ModelConfig (`tests.tiny_lm.model_config`)."""
  from tests import tiny_lm  # pylint: disable=g-import-not-at-top
  return tiny_lm.model_config


_PARAMS = {}


@pytest.fixture(scope="session")
def tiny_params():
  """`tiny_params(config, seed=0)` -> `gptjax.model.init_params`'s parameters, unboxed, made once per process.

  The init is jitted (eager init dispatches dozens of small ops, many times slower on CPU) and cached by
  (config, seed): the arrays are immutable, so tests may share them.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from gptjax import model as M  # pylint: disable=g-import-not-at-top
  init = jax.jit(M.init_params, static_argnums=0)

  def make(config, seed: int = 0):
    key = (config, seed)
    if key not in _PARAMS:
      _PARAMS[key] = nn.meta.unbox(init(config, jax.random.key(seed)))
    return _PARAMS[key]

  return make
