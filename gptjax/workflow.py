"""The seeds' workflow in Python: `lm = gptjax.fit(config, workdir)`, `lm.predict([...])`, `lm.save(path)`.

`fit` lives here rather than in `gptjax.train` (the loop's package, whose `__main__` is the command line).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
from typing import Union

import ml_collections


def load_config(config: Union[ml_collections.ConfigDict, str, os.PathLike]) -> ml_collections.ConfigDict:
  """A ConfigDict as given, or the `get_config()` of a config file (e.g. `configs/tiny.py`)."""
  if isinstance(config, ml_collections.ConfigDict):
    return config
  path = pathlib.Path(config).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"config {str(config)!r} is neither a ConfigDict nor a config file")
  # Configs import `from configs import default`: the folder above `configs/` must be importable.
  root = str(path.absolute().parent.parent)
  if root not in sys.path:
    sys.path.insert(0, root)
  spec = importlib.util.spec_from_file_location(f"_gptjax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path} defines no get_config()")
  return module.get_config()


def fit(config: Union[ml_collections.ConfigDict, str, os.PathLike], workdir: Union[str, os.PathLike]):
  """Trains (or resumes) the run that `config` describes in `workdir` and returns its `LanguageModel`.

  Args:
    config: A ConfigDict shaped like `configs/default.py`, or the path of a config file.
    workdir: The run folder (checkpoints, logs, tokenizer); calling again with the same folder resumes.

  Returns:
    The trained model with its tokenizer (`gptjax.load(workdir)`).
  """
  from gptjax import language_model  # pylint: disable=g-import-not-at-top
  from gptjax.train import loop  # pylint: disable=g-import-not-at-top
  loop.train_and_evaluate(load_config(config), workdir)  # Pre-training or fine-tuning: the config says which.
  return language_model.load(workdir)
