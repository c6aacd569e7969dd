"""Every notebook under notebooks/ runs top to bottom against a real saved model."""

import json
import pathlib
import string

import pytest

import gptjax
from gptjax.tokenizer import char_tokenizer

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model_config, tiny_params):
  tokenizer = char_tokenizer(string.printable)
  config = tiny_model_config(vocab_size=tokenizer.vocab_size, block_size=64, mlp_dim=32)
  return gptjax.LanguageModel(config, tiny_params(config), tokenizer).save(tmp_path_factory.mktemp("model"))


def test_there_are_notebooks():
  assert NOTEBOOKS, "notebooks/ has no .ipynb"


def _check_train(namespace):
  """train.ipynb trained, plotted both curves from metrics.jsonl, and its model knows its workdir."""
  train = namespace["train"]
  assert train[-1][0] == 120 and train[-1][1] < train[0][1] - 1.0, train
  assert [line.get_label() for line in namespace["figure"].axes[0].lines] == ["train", "validation"]
  assert namespace["lm"].workdir == namespace["workdir"]


CHECKS = {"train.ipynb": _check_train}


def test_train_notebook_is_committed_with_outputs():
  notebook = json.loads((NOTEBOOKS[0].parent / "train.ipynb").read_text())
  outputs = [o for c in notebook["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
  assert any("image/png" in o.get("data", {}) for o in outputs), "the loss curve's plot is not committed"
  assert any("train loss" in "".join(o.get("text", [])) for o in outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, model_dir, monkeypatch, capsys, tmp_path):
  monkeypatch.setenv("GPTJAX_MODEL", str(model_dir))
  monkeypatch.setenv("GPTJAX_WORKDIR", str(tmp_path / "run"))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  notebook = json.loads(path.read_text())
  namespace = {"__name__": "__notebook__"}
  cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
  assert cells
  for i, cell in enumerate(cells):
    source = "".join(cell["source"])
    try:
      exec(compile(source, f"{path.name}[code cell {i}]", "exec"), namespace)  # pylint: disable=exec-used
    except Exception as e:  # pylint: disable=broad-except
      pytest.fail(f"{path.name}, code cell {i} failed: {type(e).__name__}: {e}\n{source}")
  assert capsys.readouterr().out.strip(), "the notebook printed nothing"
  CHECKS.get(path.name, lambda namespace: None)(namespace)
