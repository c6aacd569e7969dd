"""One error path for every command line (gptjax/console.py): a user's mistake is one `error: ...` line and exit 2,
`--traceback` shows the trace, and library INFO chatter (orbax's, dozens of lines per checkpoint) stays off."""

import json
import os
import pathlib
import subprocess
import sys

import jax

from tests import train_helpers

train_helpers.enable_compilation_cache()
REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, cwd=REPO):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True)


def _one_error_line(run, expected_start):
  assert run.returncode == 2, run.stderr[-3000:]
  lines = run.stderr.strip().splitlines()
  assert lines[-1].startswith(expected_start), lines[-5:]
  assert "Traceback" not in run.stderr
  return lines[-1]


def test_train_reports_a_bad_value_a_misspelt_key_and_a_busy_workdir_as_one_line(tmp_path):
  workdir = tmp_path / "run"
  bad = _run("gptjax.train", "--config=configs/tiny.py", f"--workdir={workdir}", "--config.opt.grad_clip_norm=-1")
  line = _one_error_line(bad, "error: config.opt.grad_clip_norm=-1.0: must be a number in [0.0, inf]")
  assert bad.stderr.strip() == line  # Nothing else: the check runs before the config dump.
  _one_error_line(_run("gptjax.train", "--config=configs/tiny.py", f"--workdir={workdir}", "--config.train.stpes=2"),
                  'error: unknown config field \'stpes\'; Did you mean "steps" instead of "stpes"?')
  traced = _run("gptjax.train", "--config=configs/tiny.py", f"--workdir={workdir}", "--config.eval.num_batches=-1",
                "--traceback")
  assert traced.returncode != 0 and "Traceback" in traced.stderr and "ConfigError" in traced.stderr
  # A workdir another live run holds (this test's own process): refused at once, naming it.
  workdir.mkdir()
  (workdir / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "since": "now"}))
  busy = _run("gptjax.train", "--config=configs/tiny.py", f"--workdir={workdir}")
  _one_error_line(busy, f"error: workdir {workdir} is in use by process {os.getpid()} on this host")
  assert not (workdir / "checkpoints").exists()


def test_sample_evaluate_and_predict_share_the_error_path_and_keep_orbax_quiet(tmp_path):
  workdir = tmp_path / "run"
  trained = _run("gptjax.train", "--config=configs/tiny.py", f"--workdir={workdir}", "--config.train.steps=2",
                 "--config.train.eval_every=2", "--config.opt.warmup_steps=1", "--config.data.builtin_max_bytes=50000",
                 "--config.train.tensorboard=False")
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert "/orbax/" not in trained.stderr and "checkpoint_manager.py" not in trained.stderr
  sampled = _run("gptjax.sample", f"--model={workdir}", "--max_new_tokens=4", "--start=def ")
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert sampled.stdout.startswith("def ")
  # Restoring a checkpoint used to print ~30 orbax INFO lines before the samples.
  assert not [line for line in sampled.stderr.splitlines() if line.startswith("I") and ".py:" in line
              and "gptjax" not in line], sampled.stderr
  _one_error_line(_run("gptjax.sample", f"--model={tmp_path / 'missing'}"), "error: No such model folder")
  _one_error_line(_run("gptjax.sample", f"--model={workdir}", "--top_p=2"), "error: top_p must be in (0, 1]")
  _one_error_line(_run("gptjax.evaluate", f"--model={workdir}", "--task=perplexty", "--data=x"),
                  "error: flag --task=perplexty")
  (tmp_path / "data.jsonl").write_text('{"sentence": "x", "label": "a"}\n')
  _one_error_line(_run("gptjax.predict", f"--model={workdir}", f"--data={tmp_path / 'data.jsonl'}"),
                  f"error: {workdir} holds no fine-tuned task head")
