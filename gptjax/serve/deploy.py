"""`gptjax.deploy(saved_model=path)`: the last step of the seeds' workflow, train -> predict -> save -> deploy.

    lm = gptjax.fit("configs/tiny.py", "/tmp/run")
    lm.save("/tmp/model")
    with gptjax.deploy(saved_model="/tmp/model", port=0) as d:
      client = openai.OpenAI(base_url=d.url, api_key="none")
      print(client.completions.create(model=d.model, prompt="Hello", max_tokens=8).choices[0].text)

The deployment is `python -m gptjax.serve` in a child process, not a thread of the caller, because:
- it is exactly the server the command line runs and the server tests exercise, not a second code path;
- a notebook already runs an asyncio loop and owns the signal handlers uvicorn wants; a child has its own;
- `close()` really frees the model's memory and the engine's compiled programs, and a crash in the server
  cannot take the caller down with it.
The cost is loading the saved model once more (from the path the caller just saved to).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Optional, Union


class Deployment:
  """A running server. `url` is the OpenAI `base_url` (ends in /v1); `model` is the id to put in requests.

  Use as a context manager, or call `close()`; the server also stops when the Python process exits.
  """

  def __init__(self, process: subprocess.Popen, host: str, port: int, model: str, log_path: pathlib.Path,
               workdir: tempfile.TemporaryDirectory):
    self.process = process
    self.host = host
    self.port = port
    self.model = model
    self.log_path = log_path
    self._workdir = workdir
    shown = f"[{host}]" if ":" in host else host
    self.url = f"http://{shown}:{port}/v1"
    self.root_url = f"http://{shown}:{port}"

  def __repr__(self) -> str:
    state = "running" if self.process.poll() is None else f"stopped (exit {self.process.returncode})"
    return f"Deployment({self.model!r} at {self.url}, {state})"

  def log(self) -> str:
    """The server's log so far (one line per request)."""
    return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

  def close(self) -> None:
    """Stops the server (SIGTERM, then SIGKILL after 15 s) and removes its temporary files."""
    if self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(timeout=15)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait(timeout=15)
    self._workdir.cleanup()

  def __enter__(self) -> "Deployment":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except  (interpreter shutdown)
      pass


def deploy(saved_model: Union[str, os.PathLike], port: int = 0, *, host: str = "127.0.0.1", num_slots: int = 8,
           max_queue: int = 256, model_name: Optional[str] = None, timeout: float = 600.0) -> Deployment:
  """Serves a saved model (a `LanguageModel.save` folder, a gptjax workdir, or a hub name) and waits until it is
  ready (loaded and warmed up).

  Args:
    saved_model: What `gptjax.load` reads.
    port: TCP port; 0 picks a free one (read `.port` / `.url`).
    host: Interface; loopback by default (the server has no authentication).
    num_slots: Requests decoded together.
    max_queue: Requests that may wait for a slot before the server answers 429.
    model_name: The served model id (default: the folder's name).
    timeout: Seconds to wait for the server to be ready.

  Returns:
    A `Deployment`.

  Raises:
    RuntimeError: the server exited before it was ready (the message carries its error line).
    TimeoutError: it was not ready within `timeout` seconds.
  """
  from gptjax.serve.__main__ import default_model_name  # pylint: disable=g-import-not-at-top
  saved_model = str(saved_model)
  name = model_name or default_model_name(saved_model)
  workdir = tempfile.TemporaryDirectory(prefix="gptjax-deploy-")
  port_file = pathlib.Path(workdir.name) / "port"
  log_path = pathlib.Path(workdir.name) / "server.log"
  command = [sys.executable, "-m", "gptjax.serve", f"--model={saved_model}", f"--host={host}", f"--port={port}",
             f"--num_slots={num_slots}", f"--max_queue={max_queue}", f"--model_name={name}",
             f"--port_file={port_file}"]
  # The child imports this very gptjax, wherever it was imported from (a checkout, not only an install).
  env = dict(os.environ)
  root = str(pathlib.Path(__file__).resolve().parent.parent.parent)
  env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  with open(log_path, "wb") as log_file:
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=env)
  deadline = time.monotonic() + timeout
  deployment = None
  try:
    while deployment is None:
      _check_alive(process, log_path)
      if port_file.exists():
        deployment = Deployment(process, host, int(port_file.read_text()), name, log_path, workdir)
      else:
        _wait(deadline, "to listen")
    while not _healthy(deployment.root_url):
      _check_alive(process, log_path)
      _wait(deadline, "to load and warm up")
  except BaseException:
    if deployment is not None:
      deployment.close()
    else:
      process.kill()
      process.wait()
      workdir.cleanup()
    raise
  return deployment


def _wait(deadline: float, what: str) -> None:
  if time.monotonic() > deadline:
    raise TimeoutError(f"gptjax.deploy: the server took too long {what}")
  time.sleep(0.2)


def _check_alive(process: subprocess.Popen, log_path: pathlib.Path) -> None:
  if process.poll() is not None:
    lines = log_path.read_text(errors="replace").strip().splitlines() if log_path.exists() else []
    errors = [line for line in lines if "error:" in line] or lines[-5:]
    raise RuntimeError(f"gptjax.deploy: the server exited with status {process.returncode}: "
                       + "\n".join(errors))


def _healthy(root_url: str) -> bool:
  """True once /health says ok; raises if it reports that loading failed (it would never become ready)."""
  try:
    with urllib.request.urlopen(f"{root_url}/health", timeout=5) as response:
      return response.status == 200
  except urllib.error.HTTPError as e:
    try:
      error = json.loads(e.read())["error"]
    except (ValueError, KeyError, TypeError):
      return False
    if error.get("code") == "error":
      raise RuntimeError(f"gptjax.deploy: {error.get('message')}") from None
    return False
  except (urllib.error.URLError, OSError):
    return False
