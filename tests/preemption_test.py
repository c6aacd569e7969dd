"""Lose nothing: `python -m gptjax.train` stopped by SIGTERM mid-run, or killed with -9 during an asynchronous save,
then resumed, ends bit for bit where an uninterrupted run ends (parameters and every logged metric)."""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from gptjax import checkpoint
from tests import train_helpers

train_helpers.enable_compilation_cache()
TIMING = ("tokens_per_sec", "step_time_s", "mfu")
# configs/tiny.py on the test corpus, long enough (400 steps, as the example) that a signal lands mid-run.
SETTINGS = {"train.steps": 400, "train.log_every": 4, "train.eval_every": 100, "checkpoint.every_steps": 25,
            "eval.num_batches": 1, "opt.warmup_steps": 10}


def _command(tmp_path, workdir):
  config_file = tmp_path / "config.py"
  if not config_file.exists():
    train_helpers.write_config_file(tmp_path, **SETTINGS)
  return [sys.executable, "-m", "gptjax.train", f"--config={config_file}", f"--workdir={workdir}"]


def _env():
  return dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1]),
              JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _run(tmp_path, workdir):
  result = subprocess.run(_command(tmp_path, workdir), env=_env(), capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _start(tmp_path, workdir, log):
  return subprocess.Popen(_command(tmp_path, workdir), env=_env(), stdout=log, stderr=subprocess.STDOUT, text=True)


def _logged_step(workdir) -> int:
  """The last step in metrics.jsonl (0 before the first line); a line being written is skipped."""
  try:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
  except OSError:
    return 0
  complete = [line for line in lines if line.endswith("}")]
  return int(complete[-1].split('"step": ')[1].split(",")[0]) if complete else 0


def _strip(records):
  return [{k: v for k, v in m.items() if k not in TIMING} for m in records]


def _assert_same_run(workdir, reference):
  assert _strip(train_helpers.read_metrics(workdir)) == _strip(train_helpers.read_metrics(reference))
  _, params, step = checkpoint.load_workdir(workdir)
  _, expected, expected_step = checkpoint.load_workdir(reference)
  assert step == expected_step == SETTINGS["train.steps"]
  jax.tree.map(np.testing.assert_array_equal, params, expected)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("preemption")
  workdir = tmp_path / "uninterrupted"
  result = _run(tmp_path, workdir)
  assert "| elapsed " in result.stderr and " | eta " in result.stderr  # Every step line has both.
  return tmp_path, workdir


@pytest.mark.slow
def test_sigterm_mid_run_saves_exits_0_and_the_resume_equals_an_uninterrupted_run(reference):
  tmp_path, straight = reference
  workdir = tmp_path / "sigterm"
  with open(tmp_path / "sigterm.log", "w") as log:
    process = _start(tmp_path, workdir, log)
    # Past the log line of step 44 the signal most likely lands between log lines and saves: the metrics of the
    # steps since the last line travel in the checkpoint.
    while _logged_step(workdir) < 44 and process.poll() is None:
      time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    assert process.wait() == 0
  output = (tmp_path / "sigterm.log").read_text()
  assert "SIGTERM received: finishing the current step" in output
  stopped = int(re.search(r"Stopped by SIGTERM at step (\d+)", output).group(1))
  assert 42 <= stopped < SETTINGS["train.steps"], output[-3000:]
  assert "Resume with:" in output and f"--workdir={workdir}" in output
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", read_only=True)
  assert ckpt.latest_step() == stopped  # The step in flight was finished and saved, whatever the save cadence.
  ckpt.close()
  assert not (workdir / "run.lock").exists()
  resumed = _run(tmp_path, workdir)
  assert f"Resumed from step {stopped}" in resumed.stderr
  _assert_same_run(workdir, straight)


@pytest.mark.slow
def test_kill_9_during_asynchronous_saves_then_resume_equals_an_uninterrupted_run(reference):
  tmp_path, straight = reference
  workdir = tmp_path / "killed"
  checkpoints = workdir / "checkpoints"
  killed_during_save = 0
  for after_step in (30, 180):  # Two kills, each as soon as a save is in flight after that step.
    with open(tmp_path / f"killed_{after_step}.log", "w") as log:
      process = _start(tmp_path, workdir, log)
      while process.poll() is None:
        in_flight = checkpoints.is_dir() and any(".orbax-checkpoint-tmp" in p.name for p in checkpoints.iterdir())
        if _logged_step(workdir) >= after_step and in_flight:
          killed_during_save += 1
          break
        if _logged_step(workdir) >= after_step + 100:  # No save caught in flight: kill between saves instead.
          break
        time.sleep(0.005)
      process.send_signal(signal.SIGKILL)
      process.wait()
    assert _logged_step(workdir) < SETTINGS["train.steps"], "the run ended before it could be killed"
  assert killed_during_save >= 1
  resumed = _run(tmp_path, workdir)
  assert "Taking over the lock" in resumed.stderr  # The killed run's lock, from a dead process on this host.
  _assert_same_run(workdir, straight)
