"""`python -m gptjax.train` (gptjax/train/__main__.py) as a user runs it: flags, config overrides, console output,
resuming."""

import importlib
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from tests import train_helpers

train_helpers.enable_compilation_cache()


def test_the_command_line_trains_resumes_and_rejects_a_misspelt_key(tmp_path):
  config_file = train_helpers.write_config_file(tmp_path)
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1]),
             GPTJAX_COMPILATION_CACHE=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "gptjax.train", f"--config={config_file}", f"--workdir={workdir}",
             "--config.opt.warmup_steps=1", "--config.train.eval_every=2"]
  run = lambda *flags: subprocess.run(command + list(flags), env=env, capture_output=True, text=True, timeout=300)

  bad = run("--config.train.stpes=2")
  assert bad.returncode != 0 and 'Did you mean "steps" instead of "stpes"' in bad.stderr

  first = run("--config.train.steps=2")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "Compiled train_step in" in first.stderr
  assert "step 2/2 | loss " in first.stderr and " tok/s | mfu n/a" in first.stderr
  assert " ms/step | val_loss " in first.stderr
  assert "Transferring arrays to host memory" not in first.stderr  # orbax's per-save INFO lines are filtered.

  second = run("--config.train.steps=3")  # Same workdir: picks up at step 2.
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Resumed from step 2" in second.stderr and "step 3/3 | loss " in second.stderr
  assert [m["step"] for m in train_helpers.read_metrics(workdir)] == [1, 2, 3]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "3"]


CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
                 if p.stem != "__init__" and not p.stem.startswith("finetune_"))  # Those: tests/tasks_test.py.


def test_the_documented_config_keys_exist():
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  for key in ("data.source", "data.tokenizer", "train.steps", "train.batch_size", "train.eval_every",
              "train.log_every", "opt.lr", "opt.warmup_steps", "mesh.data", "mesh.fsdp", "mesh.tensor", "init_from",
              "seed"):
    node = config
    for part in key.split("."):
      node = node[part]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds_a_consistent_run(name):
  from gptjax import model as model_lib, sharding  # pylint: disable=g-import-not-at-top
  from gptjax.train import loop, schema  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{name}").get_config()
  model_config = model_lib.ModelConfig.from_dict(config.model.to_dict())
  one_device = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  schema.check(config)  # Raises on a field out of range.
  loop.check_mesh(config, one_device)  # And on a batch the mesh cannot split.
  if config.data.tokenizer.startswith("bpe:"):
    assert int(config.data.tokenizer[4:]) <= model_config.vocab_size
