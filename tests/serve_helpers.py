"""A real `python -m gptjax.serve` subprocess on 127.0.0.1 over a tiny saved model, for the server tests."""

import json
import os
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.request

from gptjax import tokenizer as tokenizer_lib
from tests import tiny_lm

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Words the prompts are made of; with the corpus, they give the byte-level BPE multi-token words and characters.
WORDS = ["Hello", "world", "stream", "emoji", "😀", "日本語", "中文", "Ångström", "the", "fox", "dog", "quick"]
MODEL_NAME = "tiny"


def save_tiny_model(path: pathlib.Path) -> pathlib.Path:
  """A one-layer random model with a byte-level BPE tokenizer (has <|endoftext|>), saved as a HF folder.

  The tokenizer learns ~700 merges from this repository's own sources, so that most tokens are whole pieces of
  text and sampled outputs have token boundaries between printable characters (stop strings can span them).
  """
  sources = [p.read_text() for p in sorted((ROOT / "gptjax").glob("*.py"))][:8]
  texts = tiny_lm.CORPUS * 4 + [" ".join(WORDS) * 4, "The quick brown fox jumps over the lazy dog. " * 10] + sources
  lm = tiny_lm.text_lm(tokenizer_lib.train_bpe(texts, 1024))
  return lm.save(path)


class Server:
  """`python -m gptjax.serve` in a child process; `url` is the OpenAI base_url.

  Start-up polls /health (bounded: at most `polls` tries), recording each status, so tests can check that it
  answered 503 before it was warmed up.
  """

  def __init__(self, model: pathlib.Path, log_path: pathlib.Path, *flags: str, polls: int = 6000):
    port_file = log_path.with_suffix(".port")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    self.log_path = log_path
    self._log = open(log_path, "wb")
    self.process = subprocess.Popen(
        [sys.executable, "-m", "gptjax.serve", f"--model={model}", "--port=0", f"--port_file={port_file}",
         f"--model_name={MODEL_NAME}", *flags], stdout=self._log, stderr=subprocess.STDOUT, env=env)
    self.health_statuses = []
    for _ in range(polls):
      if self.process.poll() is not None:
        raise RuntimeError(f"server exited: {log_path.read_text()}")
      if port_file.exists():
        self.root = f"http://127.0.0.1:{int(port_file.read_text())}"
        try:
          status, _ = self.get("/health")
        except urllib.error.URLError:  # Port written, uvicorn not accepting yet.
          status = None
        self.health_statuses.append(status)
        if status == 200:
          break
      time.sleep(0.05)
    else:
      self.close()
      raise RuntimeError(f"server not ready after {polls} polls: {log_path.read_text()}")
    self.url = f"{self.root}/v1"

  def get(self, route: str):
    try:
      with urllib.request.urlopen(self.root + route, timeout=60) as response:
        return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
      return e.code, json.loads(e.read())

  def post(self, route: str, body: bytes, content_type="application/json"):
    request = urllib.request.Request(self.root + route, data=body, headers={"Content-Type": content_type})
    try:
      with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as e:
      return e.code, dict(e.headers), json.loads(e.read())

  def metrics(self) -> dict:
    status, body = self.get("/metrics")
    assert status == 200, body
    return body

  def close(self) -> None:
    if self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
    self._log.close()
