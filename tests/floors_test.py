"""setup.py's floors are true: gptjax installed with every dependency at its lowest allowed version trains and resumes.

A virtual environment gets `pip install name==floor ...` for each of setup.py's `install_requires` (everything else
resolved by pip, nothing forced) plus gptjax built as a wheel, then runs the installed `gptjax` command from a
folder outside the checkout: train 2 steps, resume to 4, save and reload the model, sample, and read a TFDS mock
dataset. The environment is cached under ~/.cache/gptjax/floors/ keyed by the floors, so reruns only reinstall
gptjax (seconds); the first run downloads the pinned wheels (about a minute).
"""

import ast
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import uuid

import pytest

ROOT = pathlib.Path(__file__).parents[1]
CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "gptjax" / "floors"

# Run inside the floors environment, from a folder outside the checkout.
_CHECK_MODEL = r"""
import importlib
import sys
for module in sys.argv[3].split(","):  # Every module of the checkout is in the installed package.
  importlib.import_module(module)
import tensorflow_datasets as tfds
import gptjax
from gptjax import data

lm = gptjax.load(sys.argv[1])
folder = lm.save(sys.argv[2])  # Hugging Face layout: config.json + model.safetensors + tokenizer files.
again = gptjax.load(folder)
(continuation,) = again.generate(["def "], max_new_tokens=4, temperature=0.0, stop_at_eos=False)
print("generated:", len(continuation) > 0)
with tfds.testing.mock_data(num_examples=20):
  _, train, val = data.prepare("tfds:lm1b", "char", cache_dir=sys.argv[2] + "/cache", val_fraction=0.25,
                               tfds_data_dir=sys.argv[2] + "/tfds", progress=False)
print("tfds tokens:", train.num_tokens, val.num_tokens)
"""


def floors() -> list[str]:
  """setup.py's INSTALL_REQUIRES with each `>=` made `==` (read from the file's syntax tree, not imported)."""
  tree = ast.parse((ROOT / "setup.py").read_text())
  (requirements,) = [ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                     and any(getattr(t, "id", None) == "INSTALL_REQUIRES" for t in node.targets)]
  pins = []
  for requirement in requirements:
    name, sep, version = requirement.partition(">=")
    assert sep and version and "," not in version, f"{requirement!r} has no single floor (name>=version)"
    pins.append(f"{name.strip()}=={version.strip()}")
  return pins


def _env() -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS", "VIRTUAL_ENV")}
  env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
             TOKENIZERS_PARALLELISM="false")
  return env


def _run(command, cwd, **kwargs) -> str:
  result = subprocess.run([str(c) for c in command], cwd=cwd, env=_env(), capture_output=True, text=True,
                          check=False, **kwargs)
  assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
  return result.stdout + result.stderr


def floors_venv(pins: list[str]) -> pathlib.Path:
  """A cached virtual environment holding exactly `pins` (and what pip resolves for them)."""
  key = hashlib.sha256(json.dumps([sys.version, sys.platform, pins]).encode()).hexdigest()[:16]
  venv = CACHE / key
  if not (venv / "complete").is_file():
    shutil.rmtree(venv, ignore_errors=True)  # A half-built environment from an interrupted run.
    venv.parent.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "venv", venv], cwd=venv.parent)
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", *pins], cwd=venv.parent)
    (venv / "complete").write_text("\n".join(pins) + "\n")
  return venv


@pytest.mark.slow
def test_lowest_allowed_versions_train_resume_and_sample(tmp_path):
  pins = floors()
  venv = floors_venv(pins)
  python = venv / "bin" / "python"
  wheels = tmp_path / "wheels"
  # The wheel is built apart (no dependencies involved); installing it beside the pins lets pip check that
  # gptjax's requirements accept every floor, and resolve whatever else it needs.
  _run([python, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, ROOT], cwd=tmp_path)
  _run([python, "-m", "pip", "uninstall", "-q", "-y", "gptjax"], cwd=tmp_path)
  (wheel,) = wheels.glob("gptjax-*.whl")
  _run([python, "-m", "pip", "install", "-q", wheel, *pins], cwd=tmp_path)
  _run([python, "-m", "pip", "check"], cwd=tmp_path)
  installed = _run([python, "-m", "pip", "freeze"], cwd=tmp_path).lower().replace("_", "-")
  for pin in pins:
    bare = re.sub(r"\[.*\]", "", pin)  # `etils[epath]==1.13.0` is frozen as `etils==1.13.0`.
    assert bare.lower().replace("_", "-") in installed, f"{pin} is not what got installed"

  work = tmp_path / "elsewhere"  # Outside the checkout: nothing of it is importable from here.
  work.mkdir()
  workdir = work / "run"
  flags = ["--config", "gptjax:tiny", "--workdir", workdir, "--config.train.eval_every=2",
           "--config.train.log_every=2", "--config.opt.warmup_steps=1", "--config.data.tokenizer=bpe:300",
           "--config.model.vocab_size=320", "--config.data.builtin_max_bytes=200000",
           f"--config.data.cache_dir={work / 'tokens'}"]
  gptjax = venv / "bin" / "gptjax"
  first = _run([gptjax, "train", *flags, "--config.train.steps=2"], cwd=work)
  assert "step 2/2" in first
  second = _run([gptjax, "train", *flags, "--config.train.steps=4"], cwd=work)
  assert "Resumed from step 2" in second and "step 4/4" in second
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert lines[-1]["step"] == 4 and 0 < lines[-1]["train_loss"] < 10
  sample = _run([gptjax, "sample", "--model", workdir, "--start", "def ", "--max_new_tokens", "4"], cwd=work)
  assert sample.startswith("def ")
  # The lm-eval adapter needs the `eval` extra, which the floors leave out; sample and predict define absl flags
  # at import (both a --model), so they are run as commands above instead.
  paths = [p.relative_to(ROOT).with_suffix("").parts for p in (ROOT / "gptjax").rglob("*.py")
           if p.stem not in ("__main__", "lm_eval_adapter", "sample", "predict")]
  modules = sorted(".".join(parts[:-1] if parts[-1] == "__init__" else parts) for parts in paths)
  checked = _run([python, "-c", _CHECK_MODEL, workdir, work / f"saved-{uuid.uuid4().hex}", ",".join(modules)],
                 cwd=work)
  assert "generated: True" in checked and "tfds tokens:" in checked
