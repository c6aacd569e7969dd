"""Checkpoints on disk: retention, restore onto other meshes, incomplete steps, and `gptjax.load(workdir)`."""

import json
import logging
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

import gptjax
from gptjax import checkpoint
from gptjax import model as model_lib
from gptjax import optim
from gptjax import sharding
from gptjax import tokenizer as tokenizer_lib
from gptjax import trainer
from tests import tiny_lm
from tests import train_helpers

train_helpers.enable_compilation_cache()

CONFIG = tiny_lm.model_config(vocab_size=64, block_size=16, num_layers=1, emb_dim=32)


def _small_tree(value: float):
  return {"w": np.full((4, 2), value, np.float32), "b": np.arange(3, dtype=np.float32) + value}


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def test_keeps_the_newest_and_the_best(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", max_to_keep=2, keep_best=True, async_save=True)
  for step, val_loss in [(1, 3.0), (2, 1.0), (3, None), (4, 2.0), (5, None)]:
    ckpt.save(step, _small_tree(step), _small_tree(-step), {"note": "x"}, val_loss=val_loss)
  ckpt.wait()
  assert ckpt.all_steps() == [2, 4, 5]  # The two newest, and step 2: the lowest validation loss.
  assert (ckpt.latest_step(), ckpt.best_step()) == (5, 2)
  params, opt_state, meta = ckpt.restore(2, _abstract(_small_tree(0)), _abstract(_small_tree(0)))
  np.testing.assert_array_equal(params["w"], np.full((4, 2), 2.0))
  np.testing.assert_array_equal(opt_state["b"], -2.0 + np.arange(3))
  assert meta == {"note": "x", "step": 2}
  ckpt.close()


def test_restore_onto_a_different_mesh(tmp_path):
  tx, _ = optim.make_optimizer(lr=1e-3, warmup_steps=1, total_steps=10)
  state, _ = trainer.init_train_state(CONFIG, tx, sharding.make_mesh(data=1, fsdp=8), jax.random.key(0))
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", async_save=False)
  ckpt.save(7, state.params, state.opt_state, {})
  expected = jax.device_get(state)
  for mesh in (sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]), sharding.make_mesh(2, 2, 2)):
    shardings, shapes = trainer.state_shardings(CONFIG, tx, mesh)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    params, opt_state, _ = ckpt.restore(7, target.params, target.opt_state)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), expected.params)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(opt_state), expected.opt_state)
    kernel = params["h_0"]["mlp"]["c_fc"]["kernel"]
    assert kernel.sharding == shardings.params["h_0"]["mlp"]["c_fc"]["kernel"]  # The current mesh, not the saved.
  ckpt.close()


def test_an_incomplete_step_is_skipped_with_a_warning(tmp_path, caplog):
  directory = tmp_path / "ckpt"
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  for step in (1, 2):
    ckpt.save(step, _small_tree(step), _small_tree(step), {})
  ckpt.close()
  # A save killed before orbax's commit marker, a partial copy without the optimizer state, and a save killed
  # while still in its temporary folder.
  (directory / "2" / checkpoint.COMMIT_FILE).unlink()
  shutil.copytree(directory / "1", directory / "3")
  shutil.rmtree(directory / "3" / "opt_state")
  shutil.copytree(directory / "1", directory / "4.orbax-checkpoint-tmp-1234")
  with caplog.at_level(logging.WARNING):
    ckpt = checkpoint.Checkpointer(directory, async_save=False)
  warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
  assert f"step 2 in {directory} is incomplete (missing {checkpoint.COMMIT_FILE}" in warnings
  assert "step 3" in warnings and "missing opt_state" in warnings
  assert "4.orbax-checkpoint-tmp-1234 was left unfinished" in warnings
  assert "the newest complete step is 1" in warnings
  assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
  assert (directory / "2.incomplete-0").is_dir() and not (directory / "2").exists()
  # Training goes on from step 1 and saves step 2 again where the broken one was.
  params, _, _ = ckpt.restore(1, _abstract(_small_tree(0)))
  ckpt.save(2, params, _small_tree(0), {})
  assert ckpt.all_steps() == [1, 2]
  ckpt.close()


def test_restore_of_a_missing_step_names_the_complete_ones(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", async_save=False)
  ckpt.save(1, _small_tree(1), _small_tree(1), {})
  with pytest.raises(FileNotFoundError, match=r"No complete checkpoint for step 5 .* complete steps: \[1\]"):
    ckpt.restore(5, _abstract(_small_tree(0)))
  ckpt.close()


def _write_workdir(workdir, steps_and_losses):
  """A run folder as the trainer leaves it: config.json, tokenizer/, checkpoints/ (params differ per step)."""
  workdir.mkdir()
  (workdir / checkpoint.CONFIG_FILE).write_text(json.dumps({"model": CONFIG.to_dict(), "seed": 0}))
  tokenizer_lib.char_tokenizer("abcdefgh \n").save(workdir / checkpoint.TOKENIZER_DIR)
  ckpt = checkpoint.Checkpointer(workdir / checkpoint.CHECKPOINT_DIR, async_save=False)
  saved = {}
  for step, val_loss in steps_and_losses:
    saved[step] = nn.meta.unbox(model_lib.init_params(CONFIG, jax.random.key(step)))
    ckpt.save(step, saved[step], _small_tree(0), {}, val_loss=val_loss)
  ckpt.close()
  return saved


def test_gptjax_load_reads_a_run_folder(tmp_path):
  saved = _write_workdir(tmp_path / "run", [(10, 2.0), (20, 2.5)])
  lm = gptjax.load(tmp_path / "run")
  assert lm.config == CONFIG and lm.tokenizer.kind == "char" and lm.tokenizer.vocab_size == 10
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(lm.params), jax.device_get(saved[20]))
  assert lm.logits([[1, 2, 3]]).shape == (1, 3, CONFIG.vocab_size)
  config, best, step = checkpoint.load_workdir(tmp_path / "run", step="best")
  assert step == 10
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(best), jax.device_get(saved[10]))
  with pytest.raises(ValueError, match=r"one of the saved steps \[10, 20\], got 15"):
    checkpoint.load_workdir(tmp_path / "run", step=15)
