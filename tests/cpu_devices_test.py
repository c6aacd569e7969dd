"""The trainer's CPU default: the host's cores split into XLA devices that the batch is split over
(`config.mesh.cpu_devices`, `gptjax.sharding.split_cpu_cores`): how many, when it stays out of the way, and that a
run so split trains the same model as one device does."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from gptjax import sharding
from gptjax.train import schema

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("requested, batches, cores, expected", [
    (0, [12], 2, 2),  # nanoGPT's batch on two cores.
    (0, [3], 2, 1),  # An odd batch cannot be split: one device.
    (0, [12, 8], 8, 4),  # The largest count that divides every batch (train and eval).
    (0, [16], 1, 1),
    (3, [12], 2, 3),  # An explicit count is the user's, whatever the cores.
])
def test_the_automatic_count_is_the_most_cores_that_divide_every_batch(requested, batches, cores, expected):
  assert sharding.cpu_device_count(requested, batches, cores=cores) == expected


def _split_in_a_fresh_process(env: dict[str, str], count: int = 2) -> tuple[str, int]:
  """(what split_cpu_cores returned, the devices JAX then has) in a new process: this one's backends are up."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")} | env
  code = (f"import jax\nfrom gptjax import sharding\napplied = sharding.split_cpu_cores({count})\n"
          f"print(applied, jax.device_count())\nprint(sharding.split_cpu_cores(4), jax.device_count())")
  run = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"),
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  first, after_start = run.stdout.split("\n")[:2]
  assert after_start == f"None {first.split()[1]}"  # Once JAX has started, a second split is refused quietly.
  applied, devices = first.split()
  return applied, int(devices)


@pytest.mark.parametrize("env, expected", [
    ({}, ("2", 2)),  # Nothing set: the split applies.
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, ("None", 3)),  # The user's count wins.
    ({"JAX_NUM_CPU_DEVICES": "3"}, ("None", 3)),
])
def test_the_split_applies_before_jax_starts_and_never_overrides_a_count_the_user_set(env, expected):
  assert _split_in_a_fresh_process(env) == expected


def test_a_negative_count_is_refused_naming_the_field():
  from gptjax import workflow  # pylint: disable=g-import-not-at-top
  config = workflow.load_config(ROOT / "configs" / "tiny.py")
  config.mesh.cpu_devices = -1
  with pytest.raises(schema.ConfigError, match=r"config.mesh.cpu_devices=-1: must be an integer >= 0"):
    schema.check(config)


def _train(workdir: pathlib.Path, *flags: str) -> tuple[str, dict]:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  command = [sys.executable, "-m", "gptjax.train", f"--config={ROOT / 'configs' / 'tiny.py'}",
             f"--workdir={workdir}", "--config.train.steps=3", "--config.train.eval_every=3",
             "--config.train.log_every=1", "--config.opt.warmup_steps=1", "--config.data.builtin_max_bytes=200000",
             "--config.eval.tasks=", *flags]
  run = subprocess.run(command, env=dict(env, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return run.stderr, lines[-1]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPU cores")
def test_a_command_line_run_splits_the_cores_and_trains_the_same_model_as_one_device(tmp_path):
  split_log, split = _train(tmp_path / "split")
  one_log, one = _train(tmp_path / "one", "--config.mesh.cpu_devices=1")
  assert "mesh {'data': 2, 'fsdp': 1, 'tensor': 1}" in split_log
  assert "mesh {'data': 1, 'fsdp': 1, 'tensor': 1}" in one_log
  # Data parallelism is exact up to the order of the gradient sum.
  assert split["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
  assert split["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
