"""The seeds' workflow in Python: `lm = gptjax.fit(config, workdir)`, `lm.predict([...])`, `lm.save(path)`.

`fit` lives here rather than in `gptjax.train` (the loop's package, whose `__main__` is the command line).
"""

from __future__ import annotations

import os
from typing import Union

import ml_collections


def load_config(config: Union[ml_collections.ConfigDict, str, os.PathLike]) -> ml_collections.ConfigDict:
  """A ConfigDict as given, or the `get_config()` of a config file (`configs/tiny.py` or `gptjax:tiny`)."""
  if isinstance(config, ml_collections.ConfigDict):
    return config
  from gptjax import config_files  # pylint: disable=g-import-not-at-top
  return config_files.load(config)  # A path, or gptjax:<name>, from any working folder.


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
