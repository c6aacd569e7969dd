"""Two trainer processes on 127.0.0.1 (CPU collectives over gloo) reproduce the losses of one process."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np

from gptjax import checkpoint
from gptjax import trainer
from tests import train_helpers

train_helpers.enable_compilation_cache()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one(tmp_path):
  config_file = train_helpers.write_config_file(tmp_path)
  workdir = tmp_path / "two"
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1]),
             XLA_FLAGS="--xla_force_host_platform_device_count=2",  # 2 processes x 2 devices.
             GPTJAX_COMPILATION_CACHE=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  port = _free_port()
  # Each process logs to its own file: a pipe left unread while waiting on the other process could fill up and
  # block it inside a collective, hanging both.
  logs = [tmp_path / f"process_{i}.log" for i in range(2)]
  processes = []
  for i in range(2):
    with open(logs[i], "w") as log:
      processes.append(subprocess.Popen(
          [sys.executable, "-m", "gptjax.train", f"--config={config_file}", f"--workdir={workdir}",
           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
          env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
  try:
    for p in processes:
      p.wait(timeout=600)
  finally:
    for p in processes:
      p.kill()
  outputs = [log.read_text() for log in logs]
  for i, (p, err) in enumerate(zip(processes, outputs)):
    assert p.returncode == 0, f"process {i}:\n{err[-3000:]}"
  assert "Process 0 of 2; 2 local devices, 4 in all." in outputs[0]
  assert "step 6/6 | loss" in outputs[0]
  assert "step 6/6" not in outputs[1]  # Only process 0 logs.

  # The reference: one process over this test's 8 devices, same config and data.
  one = tmp_path / "one"
  trainer.train_and_evaluate(train_helpers.tiny_config(tmp_path), one)
  two_metrics, one_metrics = train_helpers.read_metrics(workdir), train_helpers.read_metrics(one)
  assert [m["step"] for m in two_metrics] == [m["step"] for m in one_metrics] == [1, 2, 3, 4, 5, 6]
  for key in ("train_loss", "val_loss"):
    np.testing.assert_allclose([m.get(key, 0.0) for m in two_metrics], [m.get(key, 0.0) for m in one_metrics],
                               rtol=1e-5)
  _, two_params, _ = checkpoint.load_workdir(workdir)
  _, one_params, _ = checkpoint.load_workdir(one)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), two_params, one_params)
