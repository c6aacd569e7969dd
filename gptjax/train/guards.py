"""What keeps a run from losing work or training the wrong thing: the workdir lock, the stop signal, and the
check that a resume continues the run that was saved.

* `WorkdirLock`: `<workdir>/run.lock` holds the pid and host of the run that owns the folder. A second run exits
  at once naming them; a lock left by a dead process on this host (kill -9, a crash) is taken over with a warning.
  A lock from another host cannot be checked from here: its message says how to remove it. Locally the lock file
  is created exclusively (`O_EXCL`); a cloud workdir has no exclusive create through epath, so there the lock is
  looked for, then written: it catches a second run started while the first is going, not two started at once.
* `StopRequest`: SIGTERM (what a preemption or `kill` sends) and SIGINT (Ctrl-C) set a flag; the loop finishes the
  step in flight, saves and exits 0. In a multi-process run JAX's coordination service owns SIGTERM and orbax's
  `reached_preemption` reports it to every process at the same step; SIGINT is then agreed on at log intervals.
* `check_resume`: the checkpoint records the run's identity (architecture, tokenizer, data source, corpus
  content, task); a resume that would change any of it is an error listing each field, saved and new, unless
  `config.checkpoint.allow_resume_changes` says to go on (then a warning lists them).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from typing import Any, Optional

from absl import logging

from gptjax import paths

LOCK_FILE = "run.lock"


class WorkdirLockedError(RuntimeError):
  """Another live run owns the workdir."""


class ResumeMismatchError(ValueError):
  """The checkpoint being resumed was trained with other settings than the config asks for."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Exists, owned by someone else.
    return True
  return True


class WorkdirLock:
  """An exclusive claim on a run folder, released by `release` (or by the process dying: see the module doc)."""

  def __init__(self, workdir: paths.PathLike):
    self.path = paths.path(workdir) / LOCK_FILE
    self.held = False

  def acquire(self) -> None:
    """Claims the folder; raises `WorkdirLockedError` naming the owner when a live run holds it."""
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for _ in range(3):
      try:
        fd = self._create()
      except FileExistsError:
        owner = self._read()
        if owner is None:  # Being written by a racing run this instant, or torn by a kill: look again.
          time.sleep(0.2)
          owner = self._read()
          if owner is None:
            logging.warning("Taking over the unreadable lock %s.", self.path)
            self.path.unlink(missing_ok=True)
            continue
        if owner.get("host") == me["host"] and not _alive(int(owner.get("pid", -1))):
          logging.warning("Taking over the lock %s of process %s on %s, which is no longer running (it was "
                          "killed or crashed).", self.path, owner.get("pid"), owner.get("host"))
          self.path.unlink(missing_ok=True)
          continue
        where = "this host" if owner.get("host") == me["host"] else f"host {owner.get('host')}"
        raise WorkdirLockedError(
            f"workdir {self.path.parent} is in use by process {owner.get('pid')} on {where} (since "
            f"{owner.get('since')}): stop that run or pass another --workdir. If that run is gone (another host "
            f"cannot be checked from here), delete {self.path}.")
      if fd is None:
        self.path.write_text(json.dumps(me))
      else:
        with os.fdopen(fd, "w") as f:
          json.dump(me, f)
      self.held = True
      return
    raise WorkdirLockedError(f"Could not take the lock {self.path}: other runs keep claiming it")

  def _create(self) -> Optional[int]:
    """The new lock file's descriptor (local), or None where the caller writes it (cloud); FileExistsError if held."""
    if paths.is_local(self.path):
      return os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    if self.path.exists():
      raise FileExistsError(os.fspath(self.path))
    return None

  def _read(self) -> Optional[dict]:
    try:
      return json.loads(self.path.read_text())
    except (OSError, ValueError):
      return None

  def release(self) -> None:
    if self.held:
      owner = self._read()
      if owner and owner.get("pid") == os.getpid():
        self.path.unlink(missing_ok=True)
      self.held = False


class StopRequest:
  """Turns SIGTERM / SIGINT into a request the loop honours between steps (installed in the main thread only)."""

  def __init__(self, multiprocess: bool):
    self.signal_name: Optional[str] = None
    self._previous = {}
    if threading.current_thread() is not threading.main_thread():
      return
    # With several processes JAX's preemption notifier handles SIGTERM (orbax's reached_preemption reads it).
    for sig in (signal.SIGINT,) if multiprocess else (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C: the user means it.
    self.signal_name = signal.Signals(signum).name
    logging.warning("%s received: finishing the current step, then saving and stopping.", self.signal_name)

  @property
  def requested(self) -> bool:
    return self.signal_name is not None

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}


def check_resume(saved: dict[str, Any], current: dict[str, Any], *, step: int, directory: os.PathLike,
                 allow_changes: bool) -> None:
  """Compares the identity a checkpoint was saved with to the one this run would train.

  Args:
    saved: flat {field: value} from the checkpoint (fields missing there, as in older checkpoints, are skipped).
    current: the same fields for this run.
    step: the step being resumed (for the message).
    directory: the checkpoint folder (for the message).
    allow_changes: `config.checkpoint.allow_resume_changes`: warn instead of raising.

  Raises:
    ResumeMismatchError: naming each changed field with its saved and new values.
  """
  changed = [(key, saved[key], value) for key, value in current.items() if key in saved and saved[key] != value]
  if not changed:
    return
  lines = "; ".join(f"{key}: {old!r} in the checkpoint, {new!r} now" for key, old, new in changed)
  if allow_changes:
    logging.warning("Resuming step %d of %s with changed settings (config.checkpoint.allow_resume_changes=True): %s",
                    step, directory, lines)
    return
  raise ResumeMismatchError(
      f"Resuming step {step} of {directory} would change what the run trains: {lines}. Use another --workdir for "
      f"a new run, or set --config.checkpoint.allow_resume_changes=True to go on with the new settings.")
