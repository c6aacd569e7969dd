"""`python -m gptjax.train` as a user runs it: flags, config overrides, console output, resuming."""

import os
import pathlib
import subprocess
import sys

import jax

import train_helpers

train_helpers.enable_compilation_cache()


def test_the_command_line_trains_resumes_and_rejects_a_misspelt_key(tmp_path):
  config_file = tmp_path / "config.py"
  config_file.write_text(
      f"import pathlib, sys\nsys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})\nimport train_helpers\n\n"
      f"def get_config():\n  return train_helpers.tiny_config(pathlib.Path({str(tmp_path)!r}))\n")
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1]),
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
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
