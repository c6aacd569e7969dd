"""Every notebook under notebooks/ runs top to bottom against a real saved model."""

import dataclasses
import json
import pathlib
import string

import flax.linen as nn
import jax
import pytest

import gptjax
from gptjax import model as M
from gptjax.tokenizer import char_tokenizer

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  tokenizer = char_tokenizer(string.printable)
  config = M.ModelConfig(vocab_size=tokenizer.vocab_size, block_size=64, num_layers=2, num_heads=2, emb_dim=16,
                         mlp_dim=32)
  params = nn.meta.unbox(M.init_params(config, jax.random.key(0)))
  return gptjax.LanguageModel(config, params, tokenizer).save(tmp_path_factory.mktemp("model"))


def test_there_are_notebooks():
  assert NOTEBOOKS, "notebooks/ has no .ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, model_dir, monkeypatch, capsys):
  monkeypatch.setenv("GPTJAX_MODEL", str(model_dir))
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
