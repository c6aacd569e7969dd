"""`gptjax.fit` from a config file and a ConfigDict, then `predict` and `save` (the seeds' workflow)."""

import pathlib

import gptjax
from gptjax import workflow

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_load_config_from_file_and_errors(tmp_path):
  config = workflow.load_config(str(ROOT / "configs" / "tiny.py"))
  assert config.model.emb_dim == 32
  assert workflow.load_config(config) is config
  try:
    workflow.load_config(tmp_path / "missing.py")
  except FileNotFoundError as e:
    assert "missing.py" in str(e)
  else:
    raise AssertionError("a missing config file must fail")


def test_fit_predict_save(tmp_path, tiny_fit_config):
  lm = gptjax.fit(tiny_fit_config(), tmp_path / "run")
  assert isinstance(lm, gptjax.LanguageModel) and lm.tokenizer is not None
  out = lm.predict(["def ", "import "], max_new_tokens=5)
  assert len(out) == 2 and all(isinstance(x, str) for x in out)
  assert lm.predict("def ", max_new_tokens=5) == out[0]  # Greedy by default: the same text alone and in a list.
  saved = lm.save(tmp_path / "hf")
  again = gptjax.load(saved)
  assert again.predict("def ", max_new_tokens=5) == out[0]
