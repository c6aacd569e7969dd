"""A whole tiny training run on real files (and on mocked TFDS): logs, evaluation, resume; the pure steps
(gptjax/train/step.py, through the names gptjax/trainer.py keeps)."""

import dataclasses
import json
import math
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
import transformers

import gptjax
from gptjax import checkpoint
from gptjax import data
from gptjax import model as model_lib
from gptjax import optim
from gptjax import sharding
from gptjax import trainer
from tests import hf_reference
from tests import train_helpers
from tests.train_helpers import SEQ_LEN, read_metrics, tiny_config

train_helpers.enable_compilation_cache()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """Corpus and token cache shared by the runs of this file."""
  return tmp_path_factory.mktemp("trainer")


@pytest.fixture(scope="module")
def finished_run(root):
  """A 6-step run that evaluates at steps 3 and 6, with TensorBoard on."""
  workdir = root / "run"
  config = tiny_config(root, **{"train.tensorboard": True, "eval.tasks": f"perplexity; perplexity=text:{root}/corpus/*.txt"})
  result = trainer.train_and_evaluate(config, workdir)
  return workdir, result


def test_a_run_logs_every_step_and_evaluates(finished_run):
  workdir, result = finished_run
  metrics = read_metrics(workdir)
  assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
  for m in metrics:
    assert {"step", "train_loss", "lr", "tokens_per_sec", "step_time_s"} <= set(m)
    assert ("val_loss" in m) == (m["step"] in (3, 6))
  assert "mfu" not in metrics[0]  # A CPU has no meaningful peak FLOP/s: no number is made up.
  assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] - 0.5
  assert metrics[-1]["val_loss"] < metrics[2]["val_loss"]
  assert math.isclose(metrics[-1]["val_ppl"], math.exp(metrics[-1]["val_loss"]), rel_tol=1e-9)
  assert result["step"] == 6 and result["val_loss"] == metrics[-1]["val_loss"]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]


def test_zero_shot_tasks_score_the_final_model_on_the_runs_validation_text(root, finished_run):
  workdir, result = finished_run
  saved = json.loads((workdir / "eval_results.json").read_text())
  assert set(saved) == set(result["tasks"]) and len(saved) == 2
  own = next(r for name, r in saved.items() if "validation split" in name)
  # Recomputed independently: PyTorch, on the final weights exported to Hugging Face, scores the corpus's validation
  # documents target by target under the task's stated window (the character tokenizer has no <|endoftext|>, so
  # each document's first character is context only).
  config = tiny_config(root)
  val_docs = list(data.load_corpus(config.data.source, val_fraction=config.data.val_fraction).val)
  lm = gptjax.load(workdir)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(lm.save(root / "final_hf")).eval()
  context, stride = own["settings"]["context"], own["settings"]["stride"]
  streams = [lm.tokenizer.encode(doc) for doc in val_docs]
  logprob = sum(hf_reference.window_logprob(hf_model, ids, context, stride) for ids in streams)
  tokens = sum(len(ids) - 1 for ids in streams)
  assert own["counts"]["tokens"] == tokens and (context, stride) == (SEQ_LEN, SEQ_LEN // 2)
  np.testing.assert_allclose(own["metrics"]["token_perplexity"], math.exp(-logprob / tokens), rtol=1e-5)
  # The evaluate CLI, given the run folder and its source with --split val, reads the same documents.
  from gptjax import evaluate  # pylint: disable=g-import-not-at-top
  settings = evaluate._run_split_settings(str(workdir), config.data.source, "val", None)
  assert settings == {"val_fraction": config.data.val_fraction, "builtin_max_bytes": config.data.builtin_max_bytes}
  assert evaluate._run_split_settings(str(workdir), "builtin:python", "val", None) == {"val_fraction": None}
  records = evaluate.load_task_data("perplexity", config.data.source, split="val", **settings)
  assert records.items == val_docs
  with pytest.raises(ValueError, match="unknown task 'perplexty'"):
    trainer.parse_eval_tasks("perplexty")
  with pytest.raises(ValueError, match="lambada needs its data"):
    trainer.parse_eval_tasks("perplexity; lambada")


def test_logged_learning_rates_follow_warmup_then_cosine(finished_run):
  # lr 1e-2, 2 warmup steps, cosine to 1e-3 at update 6. The lr logged at step k is the one update k used.
  lrs = [m["lr"] for m in read_metrics(finished_run[0])]
  cosine = lambda t: 1e-3 + (1e-2 - 1e-3) * 0.5 * (1 + math.cos(math.pi * t))
  expected = [0.0, 0.5e-2, 1e-2, cosine(1 / 4), cosine(2 / 4), cosine(3 / 4)]
  np.testing.assert_allclose(lrs, expected, rtol=1e-6, atol=1e-12)


def test_the_run_folder_loads_with_its_tokenizer_and_reproduces_val_loss(root, finished_run):
  workdir, _ = finished_run
  lm = gptjax.load(workdir)
  assert lm.tokenizer.kind == "char" and lm.config.block_size == SEQ_LEN
  config = tiny_config(root)
  _, _, val = data.prepare(config.data.source, "char", cache_dir=config.data.cache_dir,
                           tokenizer_dir=workdir / checkpoint.TOKENIZER_DIR, progress=False)
  total, count = 0.0, 0
  for rows in val.eval_batches(8, SEQ_LEN, num_batches=2):
    logits = lm.logits(rows[:, :-1]).astype(np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    total -= np.take_along_axis(log_probs, rows[:, 1:, None], -1).sum()
    count += rows[:, 1:].size
  np.testing.assert_allclose(total / count, read_metrics(workdir)[-1]["val_loss"], rtol=1e-5)
  assert lm.tokenizer.decode(lm.tokenizer.encode("the cat sees fish.")) == "the cat sees fish."


def test_resume_from_step_3_equals_an_uninterrupted_run_bit_for_bit(root, finished_run):
  workdir = root / "resumed"
  # decay_steps pins the schedule to the 6-step run's, so stopping at 3 is an interruption, not a shorter run.
  trainer.train_and_evaluate(tiny_config(root, **{"train.steps": 3, "opt.decay_steps": 6}), workdir)
  assert [m["step"] for m in read_metrics(workdir)] == [1, 2, 3]
  trainer.train_and_evaluate(tiny_config(root, **{"opt.decay_steps": 6}), workdir)
  timing = ("tokens_per_sec", "step_time_s", "mfu")
  strip = lambda ms: [{k: v for k, v in m.items() if k not in timing} for m in ms]
  assert strip(read_metrics(workdir)) == strip(read_metrics(finished_run[0]))
  _, resumed, _ = checkpoint.load_workdir(workdir)
  _, straight, _ = checkpoint.load_workdir(finished_run[0])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed), jax.device_get(straight))


def test_eval_loss_does_not_depend_on_the_dropout_rate(root):
  config = model_lib.ModelConfig.from_dict(tiny_config(root).model.to_dict())
  mesh = sharding.make_mesh()
  params = jax.device_put(model_lib.init_params(config, jax.random.key(0)), sharding.replicated(mesh))
  params = __import__("flax").linen.meta.unbox(params)
  _, train, val = data.prepare(tiny_config(root).data.source, "char", cache_dir=root / "cache", progress=False)
  batch = train.batch(0, 8, SEQ_LEN, seed=0)
  eval_losses, train_losses = [], []
  for rate in (0.0, 0.5):
    model = model_lib.GPT(dataclasses.replace(config, dropout_rate=rate, attention_dropout_rate=rate))
    eval_losses.append(trainer.evaluate(jax.jit(trainer.make_eval_step(model)), params, val, mesh,
                                        batch_size=8, seq_len=SEQ_LEN, num_batches=1)["val_loss"])
    train_loss = jax.jit(lambda p, b, m=model: trainer.loss_fn(p, b, jax.random.key(1), model=m,
                                                               deterministic=False))
    loss_sum, count = train_loss(params, batch)
    train_losses.append(float(loss_sum / count))
  assert eval_losses[0] == eval_losses[1]
  assert train_losses[0] != train_losses[1]  # Dropout is live in training: the equality above is not vacuous.


def test_gradient_accumulation_gives_the_large_batch_update(root):
  config = model_lib.ModelConfig.from_dict(tiny_config(root).model.to_dict())
  mesh = sharding.make_mesh(data=2, devices=jax.devices()[:2])
  tx, _ = optim.make_optimizer(lr=1e-2, warmup_steps=1, total_steps=10)
  _, train, _ = data.prepare(tiny_config(root).data.source, "char", cache_dir=root / "cache", progress=False)
  batch = sharding.global_batch(train.batch(0, 8, SEQ_LEN, seed=0), mesh)
  state, _ = trainer.init_train_state(config, tx, mesh, jax.random.key(0))
  results = []
  for microbatches in (1, 4):  # 4 microbatches of 2 rows, each split over the 2 devices.
    step = jax.jit(trainer.make_train_step(model_lib.GPT(config), tx, mesh, microbatches))
    with jax.set_mesh(mesh), sharding.axis_rules():
      new_state, metrics = step(state, batch, jax.random.key(1))
    results.append((float(metrics["loss"]), jax.device_get(new_state.params)))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), results[0][1], results[1][1])


def test_a_run_on_mocked_tfds_data(root):
  config = tiny_config(root, **{"data.source": "tfds:tiny_shakespeare", "data.tfds_data_dir": str(root / "tfds"),
                                "train.steps": 2, "train.eval_every": 2, "opt.warmup_steps": 1})
  with tfds.testing.mock_data(num_examples=200):
    result = trainer.train_and_evaluate(config, root / "tfds_run")
  assert result["step"] == 2 and math.isfinite(result["val_loss"])


def test_bad_settings_get_errors_that_name_them(root):
  with pytest.raises(ValueError, match=r"microbatch .* = 6\) must be divisible by mesh.data \* mesh.fsdp = 8"):
    trainer.train_and_evaluate(tiny_config(root, **{"train.batch_size": 6}), root / "bad1")
  with pytest.raises(ValueError, match=r"config.train.seq_len=32 must be in \[1, model.block_size=16\]"):
    trainer.train_and_evaluate(tiny_config(root, **{"train.seq_len": 32}), root / "bad2")
  with pytest.raises(ValueError, match=r"config.opt.warmup_steps=6 must be smaller than the decay length 6"):
    trainer.train_and_evaluate(tiny_config(root, **{"opt.warmup_steps": 6}), root / "bad4")
  with pytest.raises(FileNotFoundError, match="config.init_from='/nonexistent/model' is neither 'scratch'"):
    trainer.train_and_evaluate(tiny_config(root, **{"init_from": "/nonexistent/model"}), root / "bad3")


def test_weight_decay_reaches_matrices_and_embeddings_only(root):
  # One update with and without weight decay from the same state and batch: the difference is the decay term.
  # Every parameter is made non-zero first (biases start at 0, where decay would be invisible).
  config = model_lib.ModelConfig.from_dict(tiny_config(root).model.to_dict())
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  _, train, _ = data.prepare(tiny_config(root).data.source, "char", cache_dir=root / "cache", progress=False)
  batch = sharding.global_batch(train.batch(0, 8, SEQ_LEN, seed=0), mesh)
  params = jax.tree.map(lambda p: p + 0.5, nn.meta.unbox(model_lib.init_params(config, jax.random.key(0))))
  updated = []
  for weight_decay in (0.0, 0.5):
    tx, _ = optim.make_optimizer(lr=1e-2, warmup_steps=0, total_steps=10, weight_decay=weight_decay)
    state, _ = trainer.init_train_state(config, tx, mesh, jax.random.key(0), params=params)
    new_state, _ = jax.jit(trainer.make_train_step(model_lib.GPT(config), tx, mesh))(state, batch, jax.random.key(1))
    updated.append(jax.device_get(new_state.params))
  decayed = {jax.tree_util.keystr(path) for path, changed in jax.tree_util.tree_flatten_with_path(
      jax.tree.map(lambda a, b: bool(np.any(a != b)), updated[0], updated[1]))[0] if changed}
  kernels = {jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
             if path[-1].key in ("kernel", "embedding")}
  assert decayed == kernels  # Not the [3, H, K] c_attn bias, nor any other bias or LayerNorm parameter.
