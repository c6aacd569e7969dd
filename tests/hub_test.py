"""push_to_hub: the model card states the run's training, and without a network the push fails clearly.

The Hub is never contacted: one push runs in offline mode, the other against a closed local port.
"""

import json
import os
import pathlib
import string
import subprocess
import sys

from configs import tiny
from gptjax import hub
from gptjax import tokenizer as tokenizer_lib
from tests import tiny_lm

ROOT = pathlib.Path(__file__).parents[1]
PUSH = """
import sys
sys.path.insert(0, {root!r})
from tests import tiny_lm
from gptjax import tokenizer
lm = tiny_lm.random_lm(tokenizer=tokenizer.char_tokenizer("abc"))
try:
  lm.push_to_hub("someone/tiny", workdir={workdir!r}, token="hf_not_a_real_token")
except RuntimeError as e:
  print("RuntimeError:", e)
"""


def _workdir(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  config = tiny.get_config()
  config.train.steps = 40
  (workdir / "config.json").write_text(json.dumps(config.to_dict()))
  lines = [{"step": 20, "train_loss": 3.5, "lr": 1e-3}, {"step": 20, "val_loss": 3.4, "val_ppl": 30.0},
           {"step": 40, "train_loss": 2.25, "lr": 3e-4}, {"step": 40, "val_loss": 2.5, "val_ppl": 12.18}]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
  return workdir


def test_model_card_states_config_data_and_final_metrics(tmp_path):
  lm = tiny_lm.random_lm(tokenizer=tokenizer_lib.char_tokenizer(string.ascii_letters))
  card = hub.model_card(lm, "someone/tiny", _workdir(tmp_path))
  assert card.startswith("---\nlibrary_name: gptjax\n")
  assert "# someone/tiny" in card and "2 layers, 2 heads, width 16, context 32 tokens" in card
  assert "- Data: `builtin:python`, tokenizer `char`" in card
  assert "- Steps: 40 of 16 sequences x 64 tokens; AdamW lr 0.003" in card
  assert "Final metrics (step 40)" in card and "| train_loss | 2.25 |" in card and "| val_loss | 2.5 |" in card
  assert '"num_layers": 2' in card  # The full config, as JSON.
  bare = hub.model_card(lm, "someone/tiny")
  assert "Not recorded" in bare and "Final metrics" not in bare


def _push(tmp_path, **env_overrides):
  env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
  env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **env_overrides)
  code = PUSH.format(root=str(ROOT), workdir=str(_workdir(tmp_path)))
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  return result.stdout


def test_push_in_offline_mode_says_so(tmp_path):
  out = _push(tmp_path, HF_HUB_OFFLINE="1")
  assert "RuntimeError: Cannot push someone/tiny to the Hugging Face Hub: offline mode is on (HF_HUB_OFFLINE=1)" in out


def test_push_to_an_unreachable_endpoint_names_it(tmp_path):
  out = _push(tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_ETAG_TIMEOUT="2",
              HF_HUB_DOWNLOAD_TIMEOUT="2")
  assert "RuntimeError: Could not push someone/tiny to the Hugging Face Hub at http://127.0.0.1:9" in out
  assert "lm.save(folder)" in out
