"""Shared by the training tests: a small synthetic corpus on disk and a tiny training config over it."""

import pathlib

import numpy as np

from configs import tiny

SEQ_LEN = 16


def write_corpus(directory: pathlib.Path) -> str:
  """Writes a ~40 KB corpus with structure a tiny model picks up in a few steps; returns its glob."""
  directory.mkdir(parents=True, exist_ok=True)
  subjects, verbs, objects = ["the cat", "a dog", "my fox", "one owl"], ["sees", "eats", "likes"], ["fish", "mice"]
  rng = np.random.default_rng(0)
  for i in range(2):
    lines = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(1000)]
    (directory / f"part_{i}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(directory / "*.txt")


def tiny_config(root: pathlib.Path, **overrides):
  """configs/tiny.py on the corpus under `root` (written once), small enough to compile and run in seconds.

  Args:
    root: a folder for the corpus and the token cache.
    **overrides: dotted keys, e.g. `**{"train.steps": 4}`.
  """
  pattern = str(root / "corpus" / "*.txt")
  if not (root / "corpus").exists():
    write_corpus(root / "corpus")
  config = tiny.get_config()
  config.model.block_size = SEQ_LEN
  config.model.vocab_size = 32  # The corpus has 21 distinct characters.
  config.data.source = f"text:{pattern}"
  config.data.tokenizer = "char"
  config.data.cache_dir = str(root / "cache")
  config.data.val_fraction = 0.1
  config.train.steps = 6
  config.train.batch_size = 8
  config.train.grad_accum_steps = 1
  config.train.log_every = 1
  config.train.eval_every = 3
  config.train.tensorboard = False
  config.eval.num_batches = 2
  config.opt.lr = 1e-2
  config.opt.warmup_steps = 2
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def write_config_file(root: pathlib.Path, **overrides) -> pathlib.Path:
  """Writes `root/config.py` returning `tiny_config(root, **overrides)`, for `python -m gptjax.train --config=`.

  The file imports this module from the repository root, so it loads in a subprocess whatever its working folder.
  """
  config_file = root / "config.py"
  config_file.write_text(
      f"import pathlib, sys\nsys.path.insert(0, {str(pathlib.Path(__file__).resolve().parents[1])!r})\n"
      f"from tests import train_helpers\n\n"
      f"def get_config():\n  return train_helpers.tiny_config(pathlib.Path({str(root)!r}), **{overrides!r})\n")
  return config_file


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  import json  # pylint: disable=g-import-not-at-top
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def enable_compilation_cache() -> None:
  """Reuses XLA executables across the runs of a test file (and across test sessions on this machine).

  The trainer tests compile the same tiny programs many times (a run, then its resume, ...); on a shared 2-core
  machine each compile costs seconds, a cache hit milliseconds. Results do not depend on it. The commands' own
  cache (`gptjax.compilation_cache`: size-limited, so reads and writes of parallel test workers are locked) in a
  folder of the tests', keeping even the smallest programs.
  """
  import os  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from gptjax import compilation_cache  # pylint: disable=g-import-not-at-top
  if compilation_cache.enable(os.path.join(tempfile.gettempdir(), "gptjax_test_xla_cache")):
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
