"""The objectives of the one loop: GPT-1 fine-tuning shards over the mesh and accumulates gradients like
pre-training (1 device == 8 fake devices), and its head carries logical axis names."""

import dataclasses
import json

import flax.linen as nn
import jax
import numpy as np

from configs import finetune_sst2
from gptjax import finetune
from gptjax import model as model_lib
from gptjax import sharding
from gptjax import tasks
from gptjax import tokenizer as tokenizer_lib
from gptjax.language_model import LanguageModel
from gptjax.train import loop
from tests import tiny_lm
from tests import train_helpers

train_helpers.enable_compilation_cache()
ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?'"


# A 1-layer GPT-2 with room for the character tokenizer and the three task tokens.
CONFIG = tiny_lm.model_config(vocab_size=40, num_layers=1, mlp_dim=32)


def _pretrained(directory):
  """A tiny GPT-2 saved as a Hugging Face folder with its character tokenizer."""
  tok = tokenizer_lib.char_tokenizer(ALPHABET)
  params = jax.device_get(nn.meta.unbox(model_lib.init_params(CONFIG, jax.random.key(0))))
  LanguageModel(CONFIG, params, tok).save(directory)
  return directory


def _task_files(directory):
  rng = np.random.default_rng(0)
  words = {"pos": ["good", "great", "fine", "nice"], "neg": ["bad", "awful", "poor", "sad"]}
  for split, count in (("train", 64), ("val", 24)):
    with open(directory / f"{split}.jsonl", "w") as f:
      for i in range(count):
        label = ("pos", "neg")[i % 2]
        text = " ".join(rng.choice(words[label], 3)) + " " + " ".join(rng.choice(["it", "was", "the"], 2))
        f.write(json.dumps({"text": text, "label": label}) + "\n")


def _config(tmp_path, **overrides):
  config = finetune_sst2.get_config()
  settings = {"init_from": str(tmp_path / "hf"), "finetune.train_data": str(tmp_path / "train.jsonl"),
              "finetune.val_data": str(tmp_path / "val.jsonl"), "finetune.text_fields": ("text",),
              "finetune.labels": ("neg", "pos"), "finetune.max_length": 24, "finetune.clf_dropout": 0.0,
              "model.dropout_rate": 0.0, "model.attention_dropout_rate": 0.0, "opt.lr": 3e-3,
              "opt.warmup_steps": 1, "train.steps": 6, "train.batch_size": 16, "train.eval_every": 3,
              "train.log_every": 1, "train.tensorboard": False, "eval.batch_size": 8, **overrides}
  for key, value in settings.items():
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
  return config


def test_the_head_has_logical_axes_and_shards_with_the_model():
  spec = tasks.TaskSpec("classification", ("text",), labels=("neg", "pos"))
  boxed = finetune.init_head(spec, CONFIG, jax.random.key(0), boxed=True)
  specs = nn.get_partition_spec(boxed)
  assert specs["kernel"] == jax.sharding.PartitionSpec("embed", "classes")
  assert specs["bias"] == jax.sharding.PartitionSpec("classes")
  shardings = sharding.tree_shardings(boxed, sharding.make_mesh(data=1, fsdp=8))
  assert shardings["kernel"].spec == jax.sharding.PartitionSpec("fsdp", None)  # Width 16 split 8 ways.


def test_fine_tuning_on_one_device_equals_eight_devices_with_gradient_accumulation(tmp_path):
  _pretrained(tmp_path / "hf")
  _task_files(tmp_path)
  one_device = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  single = loop.train_and_evaluate(_config(tmp_path), tmp_path / "one", mesh=one_device)
  # 8 devices: fsdp 2 x data 4, and the 16 examples in 2 microbatches of 8 (one per device each).
  eight = loop.train_and_evaluate(_config(tmp_path, **{"train.grad_accum_steps": 2, "mesh.data": 4, "mesh.fsdp": 2}),
                                  tmp_path / "eight")
  one_log, eight_log = (train_helpers.read_metrics(tmp_path / name) for name in ("one", "eight"))
  assert [m["step"] for m in one_log] == [m["step"] for m in eight_log] == [1, 2, 3, 4, 5, 6]
  assert one_log[-1]["train_loss"] < one_log[0]["train_loss"]  # It learns: the comparison is not between idle runs.
  for key in ("train_loss", "task_loss", "lm_loss", "grad_norm"):
    np.testing.assert_allclose([m[key] for m in eight_log], [m[key] for m in one_log], rtol=2e-5, atol=1e-6)
  for key in ("val_accuracy", "val_task_loss", "val_lm_loss"):
    np.testing.assert_allclose([m[key] for m in eight_log if key in m], [m[key] for m in one_log if key in m],
                               rtol=2e-5, atol=1e-6)
  assert single["best_step"] == eight["best_step"] and single["metric"] == "accuracy"
  # The exported best models (HF folder + head) agree too.
  heads = [finetune.load_head(tmp_path / name / "best").params for name in ("one", "eight")]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), heads[0], heads[1])
  import gptjax  # pylint: disable=g-import-not-at-top
  tuned = gptjax.load(tmp_path / "one")  # The workdir loads its best model, head included.
  assert tuned.head is not None and tuned.classify("good great fine it was") in ("neg", "pos")


class _SelfDistillation:
  """The shape of the distillation objective (issue 12) on the loop's interface: KL(teacher || student) with the
  teacher passed as frozen parameters into the same jitted step."""

  def __init__(self, config):
    self.model = model_lib.GPT(config)

  def normalizer(self, batch):
    return {"tokens": jax.numpy.asarray(batch["tokens"][:, :-1].size, jax.numpy.float32)}

  def loss(self, params, batch, rng, *, deterministic, normalizer, frozen):
    del rng, deterministic
    inputs = batch["tokens"][:, :-1]
    student = jax.nn.log_softmax(self.model.apply({"params": params}, inputs))
    teacher = jax.nn.log_softmax(self.model.apply({"params": frozen}, inputs))
    kl = (jax.numpy.exp(teacher) * (teacher - student)).sum()
    return kl / normalizer["tokens"], {}


def test_frozen_parameters_reach_the_loss_and_are_never_trained():
  from gptjax import optim  # pylint: disable=g-import-not-at-top
  from gptjax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  config = dataclasses.replace(CONFIG, block_size=16)
  mesh = sharding.make_mesh(data=2, fsdp=4)
  tx, _ = optim.make_optimizer(lr=1e-2, warmup_steps=0, total_steps=10)
  init = lambda rng: model_lib.init_params(config, rng)
  state, _ = step_lib.init_train_state(init, tx, mesh, jax.random.key(0))
  teacher = jax.device_get(state.params)
  other = jax.device_get(nn.meta.unbox(init(jax.random.key(1))))
  tokens = np.random.default_rng(0).integers(0, 40, (8, 17), np.int32)
  train_step = jax.jit(step_lib.make_train_step(_SelfDistillation(config), tx, mesh, num_microbatches=2))
  with jax.set_mesh(mesh), sharding.axis_rules():
    batch = {"tokens": sharding.global_batch(tokens, mesh)}
    _, same = train_step(state, batch, jax.random.key(2), teacher)
    new_state, different = train_step(state, batch, jax.random.key(2), other)
  assert abs(float(same["loss"])) < 1e-6 and float(same["grad_norm"]) < 1e-5  # Student == teacher: KL 0.
  assert float(different["loss"]) > 1e-3 and float(different["grad_norm"]) > 1e-3
  assert not np.array_equal(jax.device_get(new_state.params)["wte"]["embedding"], teacher["wte"]["embedding"])
