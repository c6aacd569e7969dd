"""The seeds' workflow end to end: fit -> predict -> save -> deploy (gptjax/serve/deploy.py) -> a completion through the
openai client; and the command line's error path."""

import os
import pathlib
import subprocess
import sys
import urllib.request

import openai

import gptjax
from gptjax import workflow

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_fit_predict_save_deploy(tmp_path, tiny_fit_config):
  lm = gptjax.fit(tiny_fit_config(), tmp_path / "run")
  predicted = lm.predict(["def ", "import "], max_new_tokens=6)
  assert len(predicted) == 2 and all(isinstance(p, str) for p in predicted)
  path = lm.save(tmp_path / "model")
  with gptjax.deploy(saved_model=path, port=0) as deployment:
    assert isinstance(deployment, gptjax.Deployment) and deployment.url.startswith("http://127.0.0.1:")
    assert deployment.url.endswith("/v1") and deployment.port > 0 and deployment.model == "model"
    client = openai.OpenAI(base_url=deployment.url, api_key="x", max_retries=0)
    result = client.completions.create(model=deployment.model, prompt="def ", max_tokens=6, temperature=0)
    # Greedy, as predict: the deployed model is the trained one.
    assert result.choices[0].text == predicted[0]
    chat = client.chat.completions.create(model=deployment.model, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=4)
    assert chat.choices[0].message.role == "assistant"
    assert "POST /v1/completions 200" in deployment.log()
    process = deployment.process
  assert process.poll() is not None  # Closed with the context.
  try:
    urllib.request.urlopen(deployment.url + "/models", timeout=5)
  except OSError:
    pass
  else:
    raise AssertionError("the server still answers after close()")


def test_cli_errors_are_one_line(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  for flags, expected in [([f"--model={tmp_path / 'missing'}"], "missing"),
                          (["--model=x", "--num_slots=0"], "--num_slots=0")]:
    result = subprocess.run([sys.executable, "-m", "gptjax.serve", *flags], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptjax.serve: error: ") and expected in lines[0], lines


def test_default_model_name_is_the_folders_own_name(tmp_path):
  from gptjax.serve.__main__ import default_model_name  # pylint: disable=g-import-not-at-top
  (tmp_path / "tiny").mkdir()
  assert default_model_name(str(tmp_path / "tiny")) == "tiny"
  assert default_model_name("gpt2") == "gpt2"  # A hub name, as given.
  assert default_model_name("gs://bucket/runs/tiny/") == "tiny"  # A cloud folder: its last component.
