"""The workdir lock and the resume check (gptjax/train/guards.py)."""

import json
import os
import socket
import subprocess
import sys

import pytest

from gptjax.train import guards
from gptjax.train import loop
from tests import train_helpers

train_helpers.enable_compilation_cache()


def test_a_second_run_on_a_workdir_exits_at_once_naming_the_first(tmp_path):
  first = guards.WorkdirLock(tmp_path)
  first.acquire()
  owner = json.loads((tmp_path / guards.LOCK_FILE).read_text())
  assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
  with pytest.raises(guards.WorkdirLockedError, match=rf"is in use by process {os.getpid()} on this host"):
    guards.WorkdirLock(tmp_path).acquire()
  # The whole run refuses before touching anything: no checkpoints folder, no data read.
  with pytest.raises(guards.WorkdirLockedError, match=rf"process {os.getpid()}"):
    loop.train_and_evaluate(train_helpers.tiny_config(tmp_path), tmp_path)
  assert not (tmp_path / "checkpoints").exists()
  first.release()
  assert not (tmp_path / guards.LOCK_FILE).exists()


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (tmp_path / guards.LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "x"}))
  lock = guards.WorkdirLock(tmp_path)
  lock.acquire()
  assert json.loads((tmp_path / guards.LOCK_FILE).read_text())["pid"] == os.getpid()
  lock.release()
  # Another host's lock cannot be checked from here: refused, saying how to remove it.
  (tmp_path / guards.LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": "elsewhere", "since": "x"}))
  with pytest.raises(guards.WorkdirLockedError, match=r"on host elsewhere .* delete .*run.lock"):
    guards.WorkdirLock(tmp_path).acquire()


def test_check_resume_names_every_changed_field(tmp_path):
  saved = {"model.emb_dim": 128, "data.source": "builtin:python", "model.num_layers": 2}
  current = {"model.emb_dim": 64, "data.source": "text:x", "model.num_layers": 2, "new.field": 1}
  with pytest.raises(guards.ResumeMismatchError) as e:
    guards.check_resume(saved, current, step=50, directory=tmp_path, allow_changes=False)
  message = str(e.value)
  assert "model.emb_dim: 128 in the checkpoint, 64 now" in message
  assert "data.source: 'builtin:python' in the checkpoint, 'text:x' now" in message
  assert "num_layers" not in message and "new.field" not in message  # Unchanged, and unknown to old checkpoints.
  guards.check_resume(saved, current, step=50, directory=tmp_path, allow_changes=True)  # A warning only.
