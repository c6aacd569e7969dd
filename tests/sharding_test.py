"""Mesh construction, logical-axis rules, and the core promise: any mesh shape gives the losses of one device."""

import dataclasses

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gptjax import model as model_lib
from gptjax import optim
from gptjax import sharding
from gptjax import trainer
from tests import tiny_lm
from tests import train_helpers

train_helpers.enable_compilation_cache()

CONFIG = tiny_lm.model_config(vocab_size=64, block_size=16, emb_dim=32)


def test_make_mesh_fills_the_free_axis_and_rejects_bad_shapes():
  mesh = sharding.make_mesh(data=-1, fsdp=2, tensor=2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert dict(sharding.make_mesh(data=1, fsdp=-1).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  with pytest.raises(ValueError, match="Only one mesh axis may be -1"):
    sharding.make_mesh(data=-1, fsdp=-1)
  with pytest.raises(ValueError, match="3 devices but 8 are available"):
    sharding.make_mesh(data=3, fsdp=1, tensor=1)
  with pytest.raises(ValueError, match="fixed axes multiply to 3"):
    sharding.make_mesh(data=-1, fsdp=3)
  with pytest.raises(ValueError, match="mesh.tensor must be a positive integer or -1"):
    sharding.make_mesh(data=1, fsdp=1, tensor=0)


def test_parameters_and_adam_moments_are_sharded_by_logical_rules():
  tx, _ = optim.make_optimizer(lr=1e-3, warmup_steps=1, total_steps=10)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  shardings, _ = trainer.state_shardings(CONFIG, tx, mesh)
  params = shardings.params
  assert params["wte"]["embedding"].spec == P("tensor", "fsdp")  # ('vocab', 'embed')
  assert params["wpe"]["embedding"].spec == P(None, "fsdp")  # ('position', 'embed')
  assert params["h_0"]["attn"]["c_attn"]["kernel"].spec == P("fsdp", None, "tensor", None)  # (embed, qkv, heads, kv)
  assert params["h_0"]["mlp"]["c_fc"]["kernel"].spec == P("fsdp", "tensor")  # ('embed', 'mlp')
  assert params["h_0"]["mlp"]["c_proj"]["kernel"].spec == P("tensor", "fsdp")  # ('mlp', 'embed')
  assert params["h_0"]["ln_1"]["scale"].spec == P(None)
  assert shardings.step.spec == P()
  # AdamW's moments follow their parameters; its step counter is replicated.
  adam = next(s for s in jax.tree.leaves(shardings.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
              if hasattr(s, "mu"))
  assert adam.mu["h_1"]["mlp"]["c_fc"]["kernel"].spec == P("fsdp", "tensor")
  assert adam.nu["wte"]["embedding"].spec == P("tensor", "fsdp")
  assert adam.count.spec == P()


def test_a_dimension_the_mesh_does_not_divide_is_replicated():
  odd = dataclasses.replace(CONFIG, vocab_size=63, num_heads=1)
  tx, _ = optim.make_optimizer(lr=1e-3, warmup_steps=1, total_steps=10)
  shardings, _ = trainer.state_shardings(odd, tx, sharding.make_mesh(data=1, fsdp=4, tensor=2))
  assert shardings.params["wte"]["embedding"].spec == P(None, "fsdp")  # 63 rows over tensor=2: replicated.
  assert shardings.params["h_0"]["attn"]["c_attn"]["kernel"].spec == P("fsdp", None, None, None)  # One head.


def test_batches_are_split_over_data_and_fsdp():
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  assert sharding.batch_divisor(mesh) == 4
  rows = np.arange(8 * 5, dtype=np.int32).reshape(8, 5)
  batch = sharding.global_batch(rows, mesh)
  assert batch.sharding.spec == P(("data", "fsdp"))
  np.testing.assert_array_equal(np.asarray(batch), rows)
  assert {shard.data.shape for shard in batch.addressable_shards} == {(2, 5)}


def _losses(mesh, steps=3, num_microbatches=1):
  """Train losses and a final eval loss of `steps` updates on fixed random batches, on `mesh`."""
  tx, _ = optim.make_optimizer(lr=1e-2, warmup_steps=1, total_steps=10)
  model = model_lib.GPT(CONFIG)
  state, shardings = trainer.init_train_state(CONFIG, tx, mesh, jax.random.key(0))
  batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  step = jax.jit(trainer.make_train_step(model, tx, mesh, num_microbatches),
                 in_shardings=(shardings, batch_sharding, replicated), out_shardings=(shardings, replicated),
                 donate_argnums=(0,))
  # One batch, seen `steps` times: the loss must fall, so the comparison is between runs that learn.
  tokens = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (8, CONFIG.block_size + 1), np.int32)
  losses = []
  with jax.set_mesh(mesh), sharding.axis_rules():
    for _ in range(steps):
      state, metrics = step(state, sharding.global_batch(tokens, mesh), jax.random.key(1))
      losses.append(float(metrics["loss"]))
    eval_loss = jax.jit(trainer.make_eval_step(model))(state.params, sharding.global_batch(tokens, mesh))
  return losses + [float(eval_loss[0] / eval_loss[1])]


@pytest.fixture(scope="module")
def one_device_losses():
  return _losses(sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 2, 4)])  # Every axis at once; heads=2 over tensor=4 replicates.
def test_any_mesh_gives_the_losses_of_one_device(shape, one_device_losses):
  losses = _losses(sharding.make_mesh(*shape))
  assert losses[-2] < losses[0] - 0.1  # Training moved: the comparison is not between two idle runs.
  np.testing.assert_allclose(losses, one_device_losses, rtol=1e-5, atol=1e-5)
