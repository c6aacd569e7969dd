"""Refuse early: every config value out of range is an error naming the field, before any data or compile."""

import os

import pytest

from gptjax.train import loop
from gptjax.train import schema
from tests import train_helpers
from tests.train_helpers import tiny_config

train_helpers.enable_compilation_cache()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.mktemp("schema")


@pytest.mark.parametrize("key, value, message", [
    ("eval.num_batches", -1, r"config.eval.num_batches=-1: must be an integer >= 0"),
    ("opt.grad_clip_norm", -1.0, r"config.opt.grad_clip_norm=-1.0: must be a number in \[0.0, inf\]"),
    ("eval.early_stop_patience", -1, r"config.eval.early_stop_patience=-1: must be an integer >= 0"),
    ("train.steps", 0, r"config.train.steps=0: must be an integer >= 1"),
    ("train.log_every", 0, r"config.train.log_every=0"),
    ("opt.lr", -1e-3, r"config.opt.lr=-0.001"),
    ("opt.b2", 1.0, r"config.opt.b2=1.0: must be a number in \[0.0, 1.0\)"),
    ("opt.min_lr_ratio", 2.0, r"config.opt.min_lr_ratio=2.0"),
    ("eval.early_stop_min_delta", -0.1, r"config.eval.early_stop_min_delta=-0.1"),
    ("checkpoint.max_to_keep", 0, r"config.checkpoint.max_to_keep=0"),
    ("data.val_fraction", 0.0, r"config.data.val_fraction=0.0: must be a number in \(0.0, 1.0\)"),
    ("mesh.data", 0, r"config.mesh.data=0: must be a positive integer or -1"),
    ("model.dropout_rate", 1.5, r"config.model.dropout_rate=1.5"),
    ("train.profile_steps", (5, 3), r"config.train.profile_steps=\(5, 3\): must be \(\) \(off\) or \(first, last\)"),
])
def test_a_value_out_of_range_is_refused_before_anything_runs(root, key, value, message):
  workdir = root / key.replace(".", "_")
  config = tiny_config(root, **{key: value})
  with pytest.raises(schema.ConfigError, match=message):
    loop.train_and_evaluate(config, workdir)
  assert not workdir.exists()  # Refused before the workdir, the data or a compile.


def test_a_validation_split_shorter_than_one_window_is_refused_before_step_one(root):
  # 0.0001 of the ~40 KB corpus is a few characters: fewer than the 17 one window of 16 + 1 needs.
  workdir = root / "short_val"
  with pytest.raises(schema.ConfigError, match=r"The val split of config.data.source=.* has \d+ tokens, fewer than "
                                               r"the 17 one window needs.*config.data.val_fraction=0.0001"):
    loop.train_and_evaluate(tiny_config(root, **{"data.val_fraction": 0.0001}), workdir)
  assert not (workdir / "metrics.jsonl").exists() and not os.listdir(workdir / "checkpoints")


def test_the_fine_tuning_fields_are_checked_too(root):
  from configs import finetune_sst2  # pylint: disable=g-import-not-at-top
  config = finetune_sst2.get_config()
  config.finetune.lm_coef = -0.5
  with pytest.raises(schema.ConfigError, match=r"config.finetune.lm_coef=-0.5"):
    schema.check(config)
  config = finetune_sst2.get_config()
  config.init_from = "scratch"
  with pytest.raises(schema.ConfigError, match=r"config.init_from='scratch': fine-tuning needs a pre-trained model"):
    schema.check(config)
