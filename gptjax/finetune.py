"""GPT-1 fine-tuning: a linear head on the extract token, task loss + lambda * LM loss, metrics, the loop.

Radford et al. (2018): one pre-trained decoder; `gptjax.tasks` turns structured inputs into token sequences framed
by `<|start|>`, `<|delimiter|>` and `<|extract|>`, which are added to the tokenizer while the embedding grows to
match (`grow_embedding`: new rows N(0, init_std), old rows untouched). A linear head reads the final hidden state at
each sequence's extract token (gathered by index):

  classification, entailment   the state -> softmax over the labels
  similarity                   the states of both orders summed -> the head
  multiple_choice              one score per answer -> softmax across the answers
  regression (regression=True) one real output, squared error (e.g. STS-B), Pearson/Spearman metrics

Loss: task loss + `lm_coef` * LM loss on the same sequences (GPT-1's lambda = 0.5; 0 turns it off). The LM loss is
the pre-training loss restricted to TEXT: its targets are the tokens of the fields only (never a task token, never
padding) and its softmax leaves out the task tokens' logits. So it is exactly the pre-training objective on the
task's text: it does not teach the model to emit `<|delimiter|>`/`<|extract|>` (that is, where fields end or were
truncated), and the new embedding rows learn only as inputs, through the task loss. (The original code also
targeted the delimiter and extract tokens; this is the one deliberate difference.)

A fine-tuned model is saved as a Hugging Face folder (the grown embedding, the tokenizer with its task tokens) plus
`finetune.json` (the task) and `head.safetensors`; `gptjax.load` restores the head (`gptjax/heads.py`), which
`LanguageModel.classify` / `.choose` and `python -m gptjax.predict` use.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import shutil
import uuid
from collections.abc import Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from gptjax import optim
from gptjax.model import GPT, ModelConfig
from gptjax.tasks import (TASK_TOKENS, TaskData, TaskSpec, add_task_tokens, encode_records, read_records,
                          resolve_spec)

# Metrics a run can select its best checkpoint by; all are "higher is better".
CLASS_METRICS, REGRESSION_METRICS = ("accuracy", "f1", "mcc"), ("pearson", "spearman")


def grow_embedding(config: ModelConfig, params: dict, vocab_size: int, rng: jax.Array
                   ) -> tuple[ModelConfig, dict]:
  """Pads the token embedding (and an untied `lm_head`) to `vocab_size` rows; old rows untouched.

  New rows are N(0, init_std), as pre-training initialised every row. When the embedding already has the rows
  (a checkpoint padded past its tokenizer, e.g. 50257 -> 50304) nothing changes: the task tokens then use rows no
  text token ever used.

  Returns:
    (config with the new vocab_size, params with the grown arrays).
  """
  old = config.vocab_size
  if vocab_size <= old:
    return config, params
  wte = params["wte"]["embedding"]
  key_wte, key_head = jax.random.split(rng)
  new_rows = config.init_std * jax.random.normal(key_wte, (vocab_size - old, wte.shape[1]), wte.dtype)
  params = {**params, "wte": {**params["wte"], "embedding": jnp.concatenate([jnp.asarray(wte), new_rows])}}
  if "lm_head" in params:
    kernel = params["lm_head"]["kernel"]
    new_cols = config.init_std * jax.random.normal(key_head, (kernel.shape[0], vocab_size - old), kernel.dtype)
    params["lm_head"] = {**params["lm_head"], "kernel": jnp.concatenate([jnp.asarray(kernel), new_cols], axis=1)}
  return dataclasses.replace(config, vocab_size=vocab_size), params


# ----------------------------------------------------------------------------------------------------------------
# The model: GPT + a linear head on the extract token's hidden state; the loss.


def init_head(spec: TaskSpec, config: ModelConfig, rng: jax.Array) -> dict:
  """The linear head: kernel N(0, init_std) [D, outputs], bias 0 [outputs]."""
  kernel = config.init_std * jax.random.normal(rng, (config.emb_dim, spec.num_outputs), jnp.float32)
  return {"kernel": kernel, "bias": jnp.zeros((spec.num_outputs,), jnp.float32)}


def task_forward(config: ModelConfig, kind: str, params: dict, tokens_BNL, lengths_BN, *,
                 clf_dropout: float = 0.0, deterministic: bool = True, rng: Optional[jax.Array] = None):
  """Runs the GPT on every sequence and the head on the extract states.

  Args:
    config: The (grown) model config.
    kind: `TaskSpec.kind`: 'classes'/'regression' sum the N states of an example (N = 2 for similarity, 1
      otherwise) then apply the head; 'choice' scores each of the N answers.
    params: {'transformer': GPT params, 'head': {'kernel', 'bias'}}.
    tokens_BNL: right-padded token ids; lengths_BN: real tokens per sequence.
    clf_dropout: Dropout on the head's input (GPT-1: 0.1).
    deterministic: No dropout when True; otherwise `rng` is needed.

  Returns:
    (outputs, lm_logits_XLV, mask_XL): outputs [B, C] (classes/regression) or [B, N] (choice scores); the GPT's
    logits and attention mask over the X = B * N flattened sequences.
  """
  B, N, L = tokens_BNL.shape
  tokens_XL = tokens_BNL.reshape(B * N, L)
  mask_XL = jnp.arange(L)[None, :] < lengths_BN.reshape(B * N)[:, None]
  rngs = {}
  if not deterministic:
    gpt_rng, rng = jax.random.split(rng)
    rngs = {"dropout": gpt_rng}
  logits_XLV, hidden_XLD = GPT(config).apply({"params": params["transformer"]}, tokens_XL,
                                             attention_mask_BL=mask_XL, deterministic=deterministic,
                                             return_hidden=True, rngs=rngs)
  extract_X = lengths_BN.reshape(B * N) - 1
  h_XD = jnp.take_along_axis(hidden_XLD, extract_X[:, None, None], axis=1)[:, 0].astype(jnp.float32)
  if not deterministic and clf_dropout > 0:
    keep = jax.random.bernoulli(rng, 1.0 - clf_dropout, h_XD.shape)
    h_XD = jnp.where(keep, h_XD / (1.0 - clf_dropout), 0.0)
  h_BND = h_XD.reshape(B, N, -1)
  head = params["head"]
  if kind == "choice":
    outputs = (h_BND @ head["kernel"])[..., 0] + head["bias"][0]
  else:
    outputs = h_BND.sum(axis=1) @ head["kernel"] + head["bias"]
  return outputs, logits_XLV, mask_XL


def lm_loss(logits_XLV, tokens_XL, mask_XL, task_ids, example_weight_X=None):
  """Mean next-token cross-entropy over text targets, with the task tokens' logits left out of the softmax.

  Targets are positions t+1 whose token is real text: not padding and not one of `task_ids` (so `<|delimiter|>`
  and `<|extract|>` are never targets, nor is anything after the extract token).

  Returns:
    (mean loss, number of target tokens).
  """
  V = logits_XLV.shape[-1]
  task_ids = jnp.asarray(task_ids)
  is_task_V = jnp.zeros((V,), bool).at[task_ids].set(True)
  logits = jnp.where(is_task_V, -1e9, logits_XLV[:, :-1].astype(jnp.float32))
  targets = tokens_XL[:, 1:]
  weight = mask_XL[:, 1:] & ~is_task_V[targets]
  weight = weight.astype(jnp.float32)
  if example_weight_X is not None:
    weight = weight * example_weight_X[:, None]
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  count = weight.sum()
  return (nll * weight).sum() / jnp.maximum(count, 1.0), count


def task_loss(kind: str, outputs, labels, weight_B=None):
  """Mean over examples: cross-entropy over classes/answers, or squared error for regression."""
  weight_B = jnp.ones(outputs.shape[0]) if weight_B is None else weight_B
  if kind == "regression":
    per_example = (outputs[:, 0] - labels) ** 2
  else:
    logp = jax.nn.log_softmax(outputs.astype(jnp.float32), axis=-1)
    per_example = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  return (per_example * weight_B).sum() / jnp.maximum(weight_B.sum(), 1.0)


def losses(config: ModelConfig, kind: str, task_ids, params, batch, *, lm_coef: float, clf_dropout: float = 0.0,
           deterministic: bool = True, rng=None):
  """The fine-tuning objective: task loss + lm_coef * LM loss (GPT-1 eq. 5).

  Args:
    batch: {'tokens': [B, N, L], 'lengths': [B, N], 'labels': [B], optional 'weight': [B] (0 for padding rows)}.

  Returns:
    (total, aux) with aux = {'task_loss', 'lm_loss', 'outputs'}.
  """
  outputs, logits_XLV, mask_XL = task_forward(config, kind, params, batch["tokens"], batch["lengths"],
                                              clf_dropout=clf_dropout, deterministic=deterministic, rng=rng)
  weight_B = batch.get("weight")
  B, N, L = batch["tokens"].shape
  weight_X = None if weight_B is None else jnp.repeat(weight_B, N)
  task = task_loss(kind, outputs, batch["labels"], weight_B)
  lm, _ = lm_loss(logits_XLV, batch["tokens"].reshape(B * N, L), mask_XL, task_ids, weight_X)
  return task + lm_coef * lm, {"task_loss": task, "lm_loss": lm, "outputs": outputs}


# ----------------------------------------------------------------------------------------------------------------
# Metrics.


def predictions_from_outputs(kind: str, outputs: np.ndarray) -> np.ndarray:
  """Label/answer indices (argmax), or the regression scores."""
  return outputs[:, 0] if kind == "regression" else outputs.argmax(axis=-1)


def compute_metrics(kind: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """accuracy (+ F1 and MCC for two classes, macro-F1 for more) or Pearson/Spearman/MSE for regression."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  if kind == "regression":
    from scipy import stats  # pylint: disable=g-import-not-at-top
    constant = np.std(predictions) == 0 or np.std(labels) == 0
    return {"pearson": 0.0 if constant else float(stats.pearsonr(predictions, labels)[0]),
            "spearman": 0.0 if constant else float(stats.spearmanr(predictions, labels)[0]),
            "mse": float(np.mean((predictions - labels) ** 2))}
  metrics = {"accuracy": float(np.mean(predictions == labels))}
  if kind == "classes":
    classes = np.union1d(np.unique(labels), [0, 1])
    f1s = []
    for c in classes:
      tp = np.sum((predictions == c) & (labels == c))
      fp, fn = np.sum((predictions == c) & (labels != c)), np.sum((predictions != c) & (labels == c))
      f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
    if len(classes) == 2:
      metrics["f1"] = float(f1s[1])  # F1 of label 1, the positive class in GLUE's binary tasks.
      tp, tn = np.sum((predictions == 1) & (labels == 1)), np.sum((predictions == 0) & (labels == 0))
      fp, fn = np.sum((predictions == 1) & (labels == 0)), np.sum((predictions == 0) & (labels == 1))
      denominator = np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
      metrics["mcc"] = float((tp * tn - fp * fn) / denominator) if denominator else 0.0
    else:
      metrics["f1"] = float(np.mean(f1s))
  return metrics


# ----------------------------------------------------------------------------------------------------------------
# A fine-tuned head and its inference live in gptjax/heads.py (on the inference engine); re-exported here.
from gptjax.heads import HEAD_FILE, SPEC_FILE, TaskHead, choose, classify, load_head, predict_outputs  # noqa: E402,F401


# ----------------------------------------------------------------------------------------------------------------
# Training.


def load_pretrained(config) -> tuple[ModelConfig, dict, Any, str]:
  """The model named by `config.init_from` (via `checkpoint.initial_weights`) and its tokenizer.

  `init_from` is a gptjax run folder (its tokenizer is `<workdir>/tokenizer`), a Hugging Face folder (tokenizer
  files beside the weights) or a hub name; `config.finetune.tokenizer` overrides where the tokenizer comes from.

  Returns:
    (model config with `config.model`'s runtime fields, host params, tokenizer, description).
  """
  from gptjax import checkpoint  # pylint: disable=g-import-not-at-top
  from gptjax.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top
  source = config.init_from
  if source in ("", "scratch"):
    raise ValueError("Fine-tuning needs a pre-trained model: set init_from to a gptjax run folder, a Hugging Face "
                     "folder or a hub name (e.g. openai-gpt, gpt2)")
  requested = ModelConfig.from_dict(config.model.to_dict())
  model_config, params, description = checkpoint.initial_weights(source, requested)
  path = pathlib.Path(source).expanduser()
  tokenizer_source = config.finetune.get("tokenizer") or (
      path / checkpoint.TOKENIZER_DIR if checkpoint.is_workdir(path) else source)
  try:
    tokenizer = load_tokenizer(tokenizer_source)
  except (OSError, ValueError) as e:
    raise ValueError(f"Fine-tuning needs the tokenizer {source} was pre-trained with, and none was found at "
                     f"{tokenizer_source} ({e}); set config.finetune.tokenizer to its folder") from e
  if tokenizer.vocab_size > model_config.vocab_size:
    raise ValueError(f"The tokenizer has {tokenizer.vocab_size} ids but {source} has vocab_size "
                     f"{model_config.vocab_size}: they do not belong together")
  return model_config, params, tokenizer, description


def export_model(directory: os.PathLike, config: ModelConfig, params: dict, tokenizer, spec: TaskSpec,
                 extra: Optional[dict] = None) -> pathlib.Path:
  """Writes the fine-tuned model (HF folder + tokenizer + head) to `directory`, replacing it atomically."""
  from gptjax.language_model import LanguageModel  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory)
  staging = directory.with_name(f"{directory.name}.tmp-{uuid.uuid4().hex}")
  model = LanguageModel(config, jax.device_get(params["transformer"]), tokenizer)
  model.head = TaskHead(spec, jax.device_get(params["head"]))
  model.save(staging)
  model.head.save(staging, extra)
  old = directory.with_name(f"{directory.name}.old-{uuid.uuid4().hex}")
  if directory.exists():
    os.replace(directory, old)
  os.replace(staging, directory)
  shutil.rmtree(old, ignore_errors=True)
  return directory


def _eval_batches(data: TaskData, batch_size: int):
  """Fixed-shape batches as (rows, weight); the last is padded with copies of row 0 (weight 0)."""
  for lo in range(0, len(data), batch_size):
    index = np.arange(lo, lo + batch_size)
    weight = (index < len(data)).astype(np.float32)
    yield np.where(index < len(data), index, 0), weight


def make_train_step(loss_fn, tx, rng: jax.Array):
  """`train_step(params, opt_state, batch, step) -> (params, opt_state, metrics)`; dropout key fold_in(rng, step)."""
  def train_step(params, opt_state, batch, step):
    grad_fn = jax.value_and_grad(
        lambda p: loss_fn(p, batch, deterministic=False, rng=jax.random.fold_in(rng, step)), has_aux=True)
    (loss, aux), grads = grad_fn(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"train_loss": loss, "task_loss": aux["task_loss"], "lm_loss": aux["lm_loss"],
                               "grad_norm": optax.global_norm(grads)}
  return train_step


def evaluate(eval_step, params, data: TaskData, kind: str, batch_size: int) -> dict[str, float]:
  """Validation metrics, task loss and LM loss over every example (the last batch padded with weight-0 rows)."""
  outputs, sums = [], np.zeros(3)
  for rows, weight in _eval_batches(data, batch_size):
    aux = eval_step(params, {"tokens": data.tokens[rows], "lengths": data.lengths[rows],
                             "labels": data.labels[rows], "weight": weight})
    outputs.append(np.asarray(aux["outputs"]))
    sums += np.array([float(aux["task_loss"]), float(aux["lm_loss"]), 1.0]) * weight.sum()
  predictions = predictions_from_outputs(kind, np.concatenate(outputs)[:len(data)])
  result = compute_metrics(kind, predictions, data.labels)
  return {**result, "task_loss": float(sums[0] / sums[2]), "lm_loss": float(sums[1] / sums[2])}


def update_progress(progress: dict, step: int, result: dict[str, float], metric: str, min_delta: float,
                    patience: int) -> bool:
  """Records an evaluation in `progress` (best so far, evaluations since, early stop); True when it is the new best.

  An evaluation improves when `metric` beats the best by more than `min_delta`; after `patience` evaluations
  without improvement (0 = never) `progress['stopped']` is set.
  """
  if progress["best_metric"] is None or result[metric] > progress["best_metric"] + min_delta:
    progress.update(best_metric=result[metric], best_step=step, best=result, evals_since_best=0)
    return True
  progress["evals_since_best"] += 1
  progress["stopped"] = bool(patience) and progress["evals_since_best"] >= patience
  return False


def train_and_evaluate(config, workdir: os.PathLike) -> dict[str, Any]:
  """Fine-tunes `config.init_from` on `config.finetune`, keeping the best model by validation metric.

  `python -m gptjax.train --config configs/finetune_<task>.py --workdir DIR` calls this. It writes to `workdir`:
  `best/` (the best model so far: `gptjax.load(workdir / 'best')` restores it with its head), `checkpoints/`
  (`gptjax.checkpoint`: the latest step to resume from and the best one, ranked by `val_loss` = -metric),
  `metrics.jsonl` and TensorBoard events (`metrics.MetricWriter`). Running again resumes.

  Batches: each epoch is a permutation drawn from (seed, epoch) and a step's rows are a slice of it, so the step is
  the data position and a resumed run sees the batches of an uninterrupted one. Runs on one device.

  Returns:
    {'step', 'metric', 'best_step', 'best_metric', 'best': the best evaluation's metrics}.
  """
  from gptjax import checkpoint, metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  ft, opt, train, evaluation = config.finetune, config.opt, config.train, config.eval
  workdir = pathlib.Path(workdir).expanduser().absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  spec = TaskSpec.from_config(ft)
  if ft.lm_coef < 0:
    raise ValueError(f"config.finetune.lm_coef must be >= 0 (0 turns the LM loss off), got {ft.lm_coef}")
  for section, key in (("train", "epochs"), ("train", "batch_size"), ("train", "log_every"), ("eval", "batch_size")):
    if config[section][key] < 1:
      raise ValueError(f"config.{section}.{key} must be >= 1, got {config[section][key]}")

  model_cfg, gpt_params, tokenizer, description = load_pretrained(config)
  ids = add_task_tokens(tokenizer)
  rng = jax.random.key(config.seed)
  model_cfg, gpt_params = grow_embedding(model_cfg, gpt_params, tokenizer.vocab_size, jax.random.fold_in(rng, 1))
  max_length = spec.max_length or model_cfg.block_size
  if max_length > model_cfg.block_size:
    raise ValueError(f"config.finetune.max_length={max_length} exceeds the model's context {model_cfg.block_size}")

  read = functools.partial(read_records, tfds_data_dir=ft.tfds_data_dir or None, download=ft.download)
  train_records, val_records = read(ft.train_data, default_split="train"), read(ft.val_data, default_split="validation")
  for name, records in ((ft.train_data, train_records), (ft.val_data, val_records)):
    if not records:
      raise ValueError(f"{name} has no examples")
  spec = resolve_spec(spec, train_records)
  train_data = encode_records(spec, tokenizer, ids, train_records, max_length)
  val_data = encode_records(spec, tokenizer, ids, val_records, max_length)
  length = max(train_data.tokens.shape[2], val_data.tokens.shape[2])  # One static shape: one compile.
  train_data, val_data = train_data.padded_to(length), val_data.padded_to(length)
  metric = ft.metric or ("pearson" if spec.kind == "regression" else "accuracy")
  allowed = {"regression": REGRESSION_METRICS, "choice": ("accuracy",), "classes": CLASS_METRICS}[spec.kind]
  if metric not in allowed:
    raise ValueError(f"config.finetune.metric={metric!r} does not apply to {spec.task}; choose from {allowed}")

  steps_per_epoch = len(train_data) // train.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"{len(train_data)} training examples are fewer than one batch "
                     f"(config.train.batch_size={train.batch_size})")
  total_steps = train.epochs * steps_per_epoch
  tx, schedule = optim.make_optimizer(
      lr=opt.lr, warmup_steps=int(opt.warmup_fraction * total_steps), total_steps=total_steps,
      min_lr_ratio=opt.min_lr_ratio, weight_decay=opt.weight_decay, b1=opt.b1, b2=opt.b2, eps=opt.eps,
      grad_clip_norm=opt.grad_clip_norm)
  params = jax.device_put({"transformer": gpt_params, "head": init_head(spec, model_cfg, jax.random.fold_in(rng, 2))})
  opt_state = tx.init(params)
  loss_fn = functools.partial(losses, model_cfg, spec.kind, tuple(ids.values()), lm_coef=ft.lm_coef,
                              clf_dropout=ft.clf_dropout)
  train_step = jax.jit(make_train_step(loss_fn, tx, jax.random.fold_in(rng, 3)), donate_argnums=(0, 1))
  eval_step = jax.jit(lambda p, batch: loss_fn(p, batch, deterministic=True)[1])

  ckpt = checkpoint.Checkpointer(workdir / checkpoint.CHECKPOINT_DIR, max_to_keep=1, keep_best=True)
  progress = {"best_metric": None, "best_step": None, "best": None, "evals_since_best": 0, "stopped": False}
  step = ckpt.latest_step() or 0
  if step:
    abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
    params, opt_state, meta = ckpt.restore(step, abstract(params), abstract(opt_state))
    progress = meta["progress"]
    logging.info("Resumed from step %d of %s.", step, ckpt.directory)
  else:
    logging.info("Initialised from %s.", description)
  writer = metrics_lib.MetricWriter(workdir, enabled=True, resume_step=step, tensorboard=train.tensorboard)
  eval_every = train.eval_every or steps_per_epoch
  logging.info("Fine-tuning %s: %d train / %d val examples of %d tokens, labels %s, %d steps (%d per epoch).",
               spec.task, len(train_data), len(val_data), length, list(spec.labels) or spec.kind, total_steps,
               steps_per_epoch)
  try:
    while step < total_steps and not progress["stopped"]:
      epoch, index = divmod(step, steps_per_epoch)
      rows = np.random.default_rng([config.seed, epoch]).permutation(len(train_data))
      rows = rows[index * train.batch_size:(index + 1) * train.batch_size]
      batch = {"tokens": train_data.tokens[rows], "lengths": train_data.lengths[rows],
               "labels": train_data.labels[rows]}
      params, opt_state, stats = train_step(params, opt_state, batch, step)
      step += 1
      do_eval = step % eval_every == 0 or step == total_steps
      if not (do_eval or step % train.log_every == 0):
        continue
      record = {k: float(v) for k, v in stats.items()}
      if not np.isfinite(record["train_loss"]):
        raise FloatingPointError(f"Fine-tuning diverged at step {step}: loss {record['train_loss']}; lower "
                                 f"config.opt.lr")
      record["lr"] = float(schedule(step - 1))
      if do_eval:
        result = evaluate(eval_step, params, val_data, spec.kind, evaluation.batch_size)
        record.update({f"val_{k}": v for k, v in result.items()})
        if update_progress(progress, step, result, metric, evaluation.early_stop_min_delta,
                           evaluation.early_stop_patience):
          export_model(workdir / "best", model_cfg, params, tokenizer, spec,
                       extra={"step": step, "metric": metric, "validation": result, "init_from": config.init_from})
      logging.info("step %d/%d | loss %.4f (task %.4f, lm %.4f)%s", step, total_steps, record["train_loss"],
                   record["task_loss"], record["lm_loss"],
                   f" | val {metric} {record[f'val_{metric}']:.4f} (best {progress['best_metric']:.4f} at step "
                   f"{progress['best_step']})" if do_eval else "")
      writer.write(step, record)
      if do_eval:
        ckpt.save(step, params, opt_state, {"progress": progress, "task": spec.to_dict()},
                  val_loss=-result[metric])  # The checkpointer keeps the lowest val_loss: the best metric.
      if progress["stopped"]:
        logging.info("Early stop at step %d: no %s improvement in %d evaluations.", step, metric,
                     evaluation.early_stop_patience)
  finally:
    writer.close()
    ckpt.close()
  logging.info("Best %s %.4f at step %s; the model is in %s.", metric, progress["best_metric"],
               progress["best_step"], workdir / "best")
  return {"step": step, "metric": metric, "best_step": progress["best_step"],
          "best_metric": progress["best_metric"], "best": progress["best"]}
