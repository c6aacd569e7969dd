"""How a run starts and stops: fine-tuning from trained weights, a NaN stop, early stopping."""

import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from gptjax import checkpoint
from gptjax import hf
from gptjax import model as model_lib
from gptjax import trainer
from tests import train_helpers
from tests.train_helpers import read_metrics, tiny_config

train_helpers.enable_compilation_cache()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.mktemp("control")


def test_fine_tuning_starts_from_a_hugging_face_folder_and_from_a_run_folder(root):
  model_config = model_lib.ModelConfig.from_dict(tiny_config(root).model.to_dict())
  params = jax.tree.map(np.asarray, nn.meta.unbox(model_lib.init_params(model_config, jax.random.key(42))))
  hf.save_hf(root / "hf_model", model_config, params)
  # lr 0 keeps the weights, so each run's checkpoint must hold exactly the weights it started from. config.model
  # asks for 4 layers; the source's 2-layer architecture wins. The second run fine-tunes the first one's output.
  for source, expected in [(root / "hf_model", params), (root / "tuned_hf_model", params)]:
    workdir = root / f"tuned_{source.name}"
    config = tiny_config(root, **{"init_from": str(source), "opt.lr": 0.0, "opt.warmup_steps": 0, "train.steps": 1,
                                  "model.num_layers": 4})
    trainer.train_and_evaluate(config, workdir)
    loaded_config, tuned, _ = checkpoint.load_workdir(workdir)
    assert loaded_config.num_layers == 2
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(tuned), jax.device_get(expected))


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(root):
  # lr 1e30 from the first update (no warmup): Adam moves every weight by ~1e30, and the next forward pass
  # overflows float32.
  workdir = root / "diverged"
  config = tiny_config(root, **{"opt.lr": 1e30, "opt.warmup_steps": 0, "checkpoint.every_steps": 1})
  with pytest.raises(FloatingPointError, match=r"Training diverged at step 2: loss nan.* last good checkpoint is "
                                               r"step 1 in"):
    trainer.train_and_evaluate(config, workdir)
  assert os.listdir(workdir / "checkpoints") == ["1"]
  assert [m["step"] for m in read_metrics(workdir)] == [1]



def test_early_stopping_on_a_flat_validation_loss(root):
  # lr 0: the validation loss never improves after the first evaluation.
  workdir = root / "early"
  config = tiny_config(root, **{"opt.lr": 0.0, "train.steps": 20, "train.eval_every": 1,
                                "eval.early_stop_patience": 2, "checkpoint.every_steps": 100})
  result = trainer.train_and_evaluate(config, workdir)
  assert result["step"] == 3
  assert checkpoint.Checkpointer(workdir / "checkpoints", read_only=True).all_steps() == [3]
