"""What a run optimises: the objectives of the one training loop (`gptjax.train.loop`).

An objective owns its data and its loss; the loop owns everything else (sharded state, microbatching, the
evaluation cadence, early stopping, the NaN guard, logging, checkpoints). The interface, in the loop's words:

  model_config, tokenizer       the network trained and its tokenizer (saved to `<workdir>/tokenizer`)
  init_params(rng)              boxed parameters (`nn.LogicallyPartitioned`): their shapes and logical axes give the
                                sharded state; `initial_params` (host arrays or None) are the weights to start from
  normalizer(batch)             the whole batch's counts (target tokens, examples), computed before microbatching
  loss(params, microbatch, rng, deterministic, normalizer) -> (loss, metrics)
                                each term a SUM over the microbatch divided by the whole batch's count, so adding
                                the microbatches' losses and gradients gives the large-batch update exactly
  train_batch(step, ...)        this process's rows of the batch of `step`: a function of (seed, step) alone, so a
                                resumed run draws the batches of an uninterrupted one
  eval_batches(...), eval_step(params, batch), summarize(outputs)
                                the validation pass: device sums/outputs per batch, host metrics `val_*` at the end
  selection                     (metric, 'min' | 'max'): what early stopping and the best checkpoint rank by
  frozen_init(rng), frozen_params
                                optional: parameters the loss reads but never trains (distillation's teacher),
                                boxed for their shardings and as host arrays; the loop places them on the mesh once
                                and passes them to `loss(..., frozen=...)` inside the same jitted step
  identity() / content_identity()
                                what a resume must not change (`gptjax.train.guards.check_resume`)
  meta(), on_best(...), result(...), finish(...)
                                what the checkpoint records and what the run exports

Four objectives: `LanguageModeling` (next-token cross-entropy, the pre-training of `configs/default.py`),
`Finetuning` (GPT-1's task head: task loss + lm_coef * LM loss, `gptjax.finetune`), in `gptjax.train.distill`
`Distillation` (a student on a frozen teacher's predictions: its `loss` runs the teacher forward inside the same
jitted step), and in `gptjax.train.seq2seq` `GenerationFinetuning` (`finetune.task='generation'`: source ->
target examples, the loss on the target tokens only). `objective_class(config)` picks one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import pathlib
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from gptjax import checkpoint as checkpoint_lib
from gptjax import data as data_lib
from gptjax import finetune as finetune_lib
from gptjax import metrics as metrics_lib
from gptjax import model as model_lib
from gptjax import paths
from gptjax import tasks as tasks_lib
from gptjax.train import schema


def _jsonable(value):
  """Tuples as lists, so identities compare equal after a JSON round trip through the checkpoint."""
  if isinstance(value, (tuple, list)):
    return [_jsonable(v) for v in value]
  return value


def _architecture(config) -> dict[str, Any]:
  """The `config.model` fields that shape the parameters or the function (not dropout, dtypes, remat)."""
  return {f"model.{k}": _jsonable(v) for k, v in config.model.to_dict().items()
          if k not in checkpoint_lib.RUNTIME_MODEL_FIELDS and k != "decode"}


def _resumed_model_config(config, resume_meta: dict) -> model_lib.ModelConfig:
  """The architecture a resumed run trains: the checkpoint's, with this config's runtime fields."""
  requested = model_lib.ModelConfig.from_dict(config.model.to_dict())
  saved = resume_meta["model"]
  return model_lib.ModelConfig.from_dict(
      {**saved, **{k: getattr(requested, k) for k in checkpoint_lib.RUNTIME_MODEL_FIELDS}})


def array_fingerprint(*arrays: np.ndarray, samples: int = 64, chunk: int = 1 << 16) -> str:
  """A cheap content hash: shape, dtype and up to `samples` evenly spaced chunks of each (flattened) array.

  Token files can hold billions of tokens; reading them whole at every resume would cost minutes. Evenly spaced
  chunks catch a different corpus, tokenizer or split with certainty in practice, not an edit of one token.
  """
  digest = hashlib.sha256()
  for array in arrays:
    flat = np.asarray(array).reshape(-1)
    digest.update(f"{flat.dtype.str}{np.shape(array)}".encode())
    if flat.size <= samples * chunk:
      digest.update(np.ascontiguousarray(flat).tobytes())
    else:
      for start in np.linspace(0, flat.size - chunk, samples).astype(np.int64):
        digest.update(np.ascontiguousarray(flat[start:start + chunk]).tobytes())
  return digest.hexdigest()[:16]


def process_rows(rows: np.ndarray) -> np.ndarray:
  """This process's contiguous slice of a global batch's rows (all of them with one process)."""
  count, index = jax.process_count(), jax.process_index()
  local = len(rows) // count
  return rows[index * local:(index + 1) * local]


# ---------------------------------------------------------------------------------------------------------------
# Pre-training: next-token cross-entropy on a token corpus.


def loss_fn(params, tokens_BL1: jax.Array, rng: Optional[jax.Array], *, model: model_lib.GPT,
            deterministic: bool) -> tuple[jax.Array, jax.Array]:
  """Summed next-token cross-entropy (float32) and the number of target tokens.

  Args:
    params: parameter tree.
    tokens_BL1: int [B, L+1]: inputs are [:, :-1], targets [:, 1:].
    rng: dropout key (unused when `deterministic`).
    model: the `GPT` module.
    deterministic: True for evaluation (dropout off).

  Returns:
    (loss_sum, num_tokens), both float32 scalars.
  """
  inputs_BL, targets_BL = tokens_BL1[:, :-1], tokens_BL1[:, 1:]
  rngs = None if deterministic else {"dropout": rng}
  logits_BLV = model.apply({"params": params}, inputs_BL, deterministic=deterministic, rngs=rngs)
  nll_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV.astype(jnp.float32), targets_BL)
  return jnp.sum(nll_BL), jnp.asarray(nll_BL.size, jnp.float32)


def prepare_corpus(config, workdir: pathlib.Path):
  """Tokenised splits and tokenizer; process 0 goes first so the others reload its tokenizer, never race it."""
  d = config.data

  def prepare():
    return data_lib.prepare(
        d.source, d.tokenizer, cache_dir=d.cache_dir or None, tokenizer_dir=workdir / checkpoint_lib.TOKENIZER_DIR,
        val_fraction=d.val_fraction, tfds_data_dir=d.tfds_data_dir or None, download=d.download,
        builtin_max_bytes=d.builtin_max_bytes, progress=jax.process_index() == 0)

  if jax.process_count() == 1:
    return prepare()
  if jax.process_index() == 0:
    result = prepare()
    multihost_utils.sync_global_devices("gptjax_data")
    return result
  multihost_utils.sync_global_devices("gptjax_data")
  return prepare()


class LanguageModeling:
  """Next-token prediction on `config.data` (pre-training, or continued training from `init_from`)."""

  name = "language_modeling"
  selection = ("val_loss", "min")

  def __init__(self, config, workdir: pathlib.Path, resume_meta: Optional[dict] = None):
    self.config = config
    requested = model_lib.ModelConfig.from_dict(config.model.to_dict())
    if resume_meta is not None:
      # The architecture this run trained (an init_from model's, say), not re-read from init_from.
      self.model_config, self.initial_params, self.description = (
          _resumed_model_config(config, resume_meta), None, None)
    else:
      self.model_config, self.initial_params, self.description = checkpoint_lib.initial_weights(
          config.init_from, requested)
    block = self.model_config.block_size
    self.seq_len = config.train.seq_len or block
    if not 1 <= self.seq_len <= block:
      raise schema.ConfigError(f"config.train.seq_len={self.seq_len} must be in [1, model.block_size={block}]")
    self.tokenizer, self.train_ds, self.val_ds = prepare_corpus(config, workdir)
    data_lib.check_vocab_size(self.tokenizer, self.model_config.vocab_size)
    for split, ds in (("train", self.train_ds), ("val", self.val_ds)):
      if ds.num_tokens < self.seq_len + 1:
        hint = ("raise config.data.val_fraction" if split == "val" else "use more text or lower "
                "config.data.val_fraction")
        raise schema.ConfigError(
            f"The {split} split of config.data.source={config.data.source!r} has {ds.num_tokens} tokens, fewer than "
            f"the {self.seq_len + 1} one window needs (config.train.seq_len or model.block_size, plus 1): {hint}, "
            f"or lower config.train.seq_len (config.data.val_fraction={config.data.val_fraction}).")
    logging.info("Data: train %s, val %s; tokenizer %s.", self.train_ds, self.val_ds, self.tokenizer)
    self.model = model_lib.GPT(self.model_config)
    self.tokens_per_example = self.seq_len
    self.steps_per_epoch = max(self.train_ds.num_tokens // (config.train.batch_size * self.seq_len), 1)

  @staticmethod
  def identity(config) -> dict[str, Any]:
    """What a resume must not change, known from the config alone (checked before the data is read)."""
    d = config.data
    out = {"objective": LanguageModeling.name, "init_from": config.init_from, "data.source": d.source,
           "data.tokenizer": d.tokenizer}
    if config.init_from in ("", "scratch"):
      out.update(_architecture(config))
    return out

  def content_identity(self) -> dict[str, Any]:
    return {"tokenizer.vocab_size": self.tokenizer.vocab_size,
            "corpus.train": array_fingerprint(self.train_ds.tokens()),
            "corpus.val": array_fingerprint(self.val_ds.tokens())}

  def meta(self) -> dict[str, Any]:
    c = self.config
    return {"model": self.model_config.to_dict(),
            "tokenizer": {"kind": self.tokenizer.kind, "vocab_size": self.tokenizer.vocab_size,
                          "eos_id": self.tokenizer.eos_id},
            "data": {"source": c.data.source, "tokenizer": c.data.tokenizer, "seed": c.seed,
                     "batch_size": c.train.batch_size, "seq_len": self.seq_len}}

  def init_params(self, rng):
    return model_lib.init_params(self.model_config, rng)

  def normalizer(self, batch) -> dict[str, jax.Array]:
    B, L1 = batch["tokens"].shape
    return {"tokens": jnp.asarray(B * (L1 - 1), jnp.float32)}

  def loss(self, params, batch, rng, *, deterministic: bool, normalizer) -> tuple[jax.Array, dict]:
    loss_sum, _ = loss_fn(params, batch["tokens"], rng, model=self.model, deterministic=deterministic)
    return loss_sum / normalizer["tokens"], {}

  def train_batch(self, step: int) -> dict[str, np.ndarray]:
    c = self.config
    return {"tokens": self.train_ds.batch(step, c.train.batch_size, self.seq_len, c.seed,
                                          process_index=jax.process_index(), process_count=jax.process_count())}

  def eval_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    num_batches = self.config.eval.num_batches or None
    for rows in self.val_ds.eval_batches(batch_size, self.seq_len, num_batches, process_index=jax.process_index(),
                                         process_count=jax.process_count()):
      yield {"tokens": rows}

  def eval_step(self, params, batch) -> dict[str, jax.Array]:
    loss_sum, count = loss_fn(params, batch["tokens"], None, model=self.model, deterministic=True)
    return {"loss_sum": loss_sum, "tokens": count}

  def summarize(self, outputs: list[dict[str, np.ndarray]]) -> dict[str, float]:
    total = sum(float(o["loss_sum"]) for o in outputs)
    count = sum(float(o["tokens"]) for o in outputs)
    loss = total / count
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 80.0))}

  def flops_per_token(self) -> float:
    return metrics_lib.flops_per_token(self.model_config, self.seq_len)

  def on_best(self, workdir, params, step: int, record: dict) -> None:
    del workdir, params, step, record  # The run folder itself is the model (`gptjax.load(workdir)`).

  def result(self, last: dict, early: dict) -> dict[str, Any]:
    out = dict(last)
    if early.get("best") is not None:
      out["best_val_loss"] = early["best"]
    return out

  def finish(self, workdir: pathlib.Path, result: dict) -> None:
    if self.config.eval.get("tasks"):
      result["tasks"] = run_eval_tasks(self.config, workdir)


def evaluate(eval_step, params, dataset: data_lib.TokenDataset, mesh: jax.sharding.Mesh, *, batch_size: int,
             seq_len: int, num_batches: Optional[int]) -> dict[str, float]:
  """Validation loss (mean per target token) and perplexity of `dataset` with a jitted `eval_step(params, rows)`
  returning (loss_sum, num_tokens); batches sharded like training batches."""
  from gptjax import sharding  # pylint: disable=g-import-not-at-top
  total, count = 0.0, 0.0
  for rows in dataset.eval_batches(batch_size, seq_len, num_batches, process_index=jax.process_index(),
                                   process_count=jax.process_count()):
    loss_sum, num_tokens = eval_step(params, sharding.global_batch(rows, mesh))
    total += float(loss_sum)
    count += float(num_tokens)
  loss = total / count
  return {"val_loss": loss, "val_ppl": math.exp(min(loss, 80.0))}


def parse_eval_tasks(spec: str) -> list[tuple[str, Optional[str]]]:
  """`config.eval.tasks` -> [(task, data or None)]: entries `task` or `task=data`, separated by ';'."""
  from gptjax import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  entries = []
  for entry in filter(None, (e.strip() for e in spec.split(";"))):
    task, _, data = entry.partition("=")
    if task.strip() not in evaluate_lib.TASKS:
      raise schema.ConfigError(f"config.eval.tasks entry {entry!r}: unknown task {task.strip()!r}; expected one of "
                               f"{evaluate_lib.TASKS}, as 'task' or 'task=data' separated by ';'")
    if not data and task.strip() != "perplexity":
      raise schema.ConfigError(f"config.eval.tasks entry {entry!r}: {task.strip()} needs its data, as "
                               f"'{task.strip()}=<source>'")
    entries.append((task.strip(), data.strip() or None))
  return entries


def run_eval_tasks(config, workdir: pathlib.Path) -> dict[str, dict]:
  """Evaluates the run's last checkpoint on `config.eval.tasks`; writes `<workdir>/eval_results.json`.

  `perplexity` without data scores the run's own validation documents (the same corpus, split and tokenizer as
  the validation loss, each document scored from `<|endoftext|>`). Runs on process 0 with the parameters gathered
  to one device (the evaluation code is single-device).
  """
  from gptjax import evaluate as evaluate_lib, language_model  # pylint: disable=g-import-not-at-top
  tasks = parse_eval_tasks(config.eval.tasks)
  if jax.process_index() != 0:
    return {}
  lm = language_model.load(workdir)
  results = {}
  for task, data in tasks:
    if data is None:
      d = config.data
      corpus = data_lib.load_corpus(d.source, val_fraction=d.val_fraction, tfds_data_dir=d.tfds_data_dir or None,
                                    download=False, builtin_max_bytes=d.builtin_max_bytes)
      data, name = list(corpus.val), f"{d.source} (validation split)"
    else:
      name = data
    result = evaluate_lib.run_task(lm, task, data, max_examples=config.eval.tasks_max_examples, progress=False)
    result["data"] = name
    results[f"{task}:{name}"] = result
    logging.info("Evaluation of %s on %s:\n%s", task, name, evaluate_lib.format_table(result))
  paths.write_atomic(workdir / "eval_results.json", json.dumps(results, indent=2, default=str) + "\n")
  return results


# ---------------------------------------------------------------------------------------------------------------
# GPT-1 fine-tuning: a task head on the extract token, task loss + lm_coef * LM loss on the task's text.


def load_pretrained(config) -> tuple[model_lib.ModelConfig, dict, Any, str]:
  """The model named by `config.init_from` (via `checkpoint.initial_weights`) and its tokenizer.

  `init_from` is a gptjax run folder (its tokenizer is `<workdir>/tokenizer`), a Hugging Face folder (tokenizer
  files beside the weights) or a hub name; `config.finetune.tokenizer` overrides where the tokenizer comes from.

  Returns:
    (model config with `config.model`'s runtime fields, host params, tokenizer, description).
  """
  from gptjax.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top
  source = config.init_from
  requested = model_lib.ModelConfig.from_dict(config.model.to_dict())
  model_config, params, description = checkpoint_lib.initial_weights(source, requested)
  tokenizer_source = config.finetune.get("tokenizer") or pretrained_tokenizer_source(source)
  try:
    tokenizer = load_tokenizer(tokenizer_source)
  except (OSError, ValueError) as e:
    raise ValueError(f"Fine-tuning needs the tokenizer {source} was pre-trained with, and none was found at "
                     f"{tokenizer_source} ({e}); set config.finetune.tokenizer to its folder") from e
  if tokenizer.vocab_size > model_config.vocab_size:
    raise ValueError(f"The tokenizer has {tokenizer.vocab_size} ids but {source} has vocab_size "
                     f"{model_config.vocab_size}: they do not belong together")
  return model_config, params, tokenizer, description


def pretrained_tokenizer_source(source: str):
  """Where the tokenizer of the model `source` names lives: `<run>/tokenizer` for a gptjax run folder, `<run>/best`
  for a fine-tuning run, else `source` itself (a Hugging Face folder holds its tokenizer files; a hub name)."""
  path = paths.path(source)
  if checkpoint_lib.is_workdir(path):
    return path / checkpoint_lib.TOKENIZER_DIR
  if (path / "best" / finetune_lib.SPEC_FILE).is_file():
    return path / "best"
  return source


_SPEC_FIELDS = ("task", "train_data", "val_data", "text_fields", "choice_fields", "label_field", "labels",
                "regression", "max_length", "truncate", "tokenizer")


class Finetuning:
  """GPT-1 task fine-tuning (`config.finetune`): the loss, data and export of `gptjax.finetune`'s head."""

  name = "finetuning"

  def __init__(self, config, workdir: pathlib.Path, resume_meta: Optional[dict] = None):
    from gptjax.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top
    self.config, self.workdir = config, workdir
    ft = config.finetune
    spec = tasks_lib.TaskSpec.from_config(ft)
    rng = jax.random.key(config.seed)
    tokenizer_dir = workdir / checkpoint_lib.TOKENIZER_DIR
    if resume_meta is not None:
      self.model_config = _resumed_model_config(config, resume_meta)
      self.tokenizer = load_tokenizer(tokenizer_dir)
      self.ids = tasks_lib.add_task_tokens(self.tokenizer)
      gpt_params, self.description = None, None
    else:
      model_config, gpt_params, self.tokenizer, self.description = load_pretrained(config)
      self.ids = tasks_lib.add_task_tokens(self.tokenizer)
      self.model_config, gpt_params = finetune_lib.grow_embedding(
          model_config, gpt_params, self.tokenizer.vocab_size, jax.random.fold_in(rng, 1))
      gpt_params = jax.device_get(gpt_params)
      if jax.process_index() == 0:
        self.tokenizer.save(tokenizer_dir)  # With its task tokens: a resume encodes with the very same ids.
    max_length = spec.max_length or self.model_config.block_size
    if max_length > self.model_config.block_size:
      raise schema.ConfigError(f"config.finetune.max_length={max_length} exceeds the model's context "
                               f"{self.model_config.block_size}")
    read = functools.partial(tasks_lib.read_records, tfds_data_dir=ft.tfds_data_dir or None, download=ft.download)
    train_records = read(ft.train_data, default_split="train")
    val_records = read(ft.val_data, default_split="validation")
    for field, records in (("train_data", train_records), ("val_data", val_records)):
      if not records:
        raise schema.ConfigError(f"config.finetune.{field}={ft[field]!r} has no examples")
    self.spec = tasks_lib.resolve_spec(spec, train_records)
    self.train_data = tasks_lib.encode_records(self.spec, self.tokenizer, self.ids, train_records, max_length)
    self.val_data = tasks_lib.encode_records(self.spec, self.tokenizer, self.ids, val_records, max_length)
    length = max(self.train_data.tokens.shape[2], self.val_data.tokens.shape[2])  # One static shape: one compile.
    self.train_data, self.val_data = self.train_data.padded_to(length), self.val_data.padded_to(length)
    kind = self.spec.kind
    self.metric = ft.metric or ("pearson" if kind == "regression" else "accuracy")
    allowed = {"regression": finetune_lib.REGRESSION_METRICS, "choice": ("accuracy",),
               "classes": finetune_lib.CLASS_METRICS}[kind]
    if self.metric not in allowed:
      raise schema.ConfigError(f"config.finetune.metric={self.metric!r} does not apply to {self.spec.task}; "
                               f"choose from {allowed}")
    self.selection = (f"val_{self.metric}", "max")
    batch = config.train.batch_size
    self.steps_per_epoch = len(self.train_data) // batch
    if self.steps_per_epoch < 1:
      raise schema.ConfigError(f"config.finetune.train_data has {len(self.train_data)} examples, fewer than one "
                               f"batch (config.train.batch_size={batch})")
    self.tokens_per_example = int(np.prod(self.train_data.tokens.shape[1:]))
    if gpt_params is not None:
      head = finetune_lib.init_head(self.spec, self.model_config, jax.random.fold_in(rng, 2))
      self.initial_params = {"transformer": gpt_params, "head": jax.device_get(head)}
    else:
      self.initial_params = None
    self.task_ids = tuple(self.ids.values())
    logging.info("Fine-tuning %s: %d train / %d val examples of %d tokens, labels %s, %d steps per epoch of "
                 "batch %d.", self.spec.task, len(self.train_data), len(self.val_data), length,
                 list(self.spec.labels) or kind, self.steps_per_epoch, batch)

  @staticmethod
  def identity(config) -> dict[str, Any]:
    out = {"objective": Finetuning.name, "init_from": config.init_from}
    out.update({f"finetune.{k}": _jsonable(config.finetune[k]) for k in _SPEC_FIELDS if k in config.finetune})
    return out

  def content_identity(self) -> dict[str, Any]:
    t, v = self.train_data, self.val_data
    return {"tokenizer.vocab_size": self.tokenizer.vocab_size,
            "corpus.train": array_fingerprint(t.tokens, t.lengths, t.labels),
            "corpus.val": array_fingerprint(v.tokens, v.lengths, v.labels)}

  def meta(self) -> dict[str, Any]:
    return {"model": self.model_config.to_dict(), "task": self.spec.to_dict(),
            "tokenizer": {"kind": self.tokenizer.kind, "vocab_size": self.tokenizer.vocab_size}}

  def init_params(self, rng):
    k1, k2 = jax.random.split(rng)
    return {"transformer": model_lib.init_params(self.model_config, k1),
            "head": finetune_lib.init_head(self.spec, self.model_config, k2, boxed=True)}

  def normalizer(self, batch) -> dict[str, jax.Array]:
    tokens, lengths = batch["tokens"], batch["lengths"]
    B, N, L = tokens.shape
    mask = jnp.arange(L)[None, None, :] < lengths[..., None]
    is_task = jnp.zeros((self.model_config.vocab_size,), bool).at[jnp.asarray(self.task_ids)].set(True)
    targets = mask[..., 1:] & ~is_task[tokens[..., 1:]]
    weight = batch.get("weight", jnp.ones((B,), jnp.float32))
    return {"examples": weight.sum(),
            "lm_tokens": (targets.astype(jnp.float32) * weight[:, None, None]).sum()}

  def loss(self, params, batch, rng, *, deterministic: bool, normalizer) -> tuple[jax.Array, dict]:
    ft = self.config.finetune
    sums = finetune_lib.loss_sums(self.model_config, self.spec.kind, self.task_ids, params, batch,
                                  clf_dropout=ft.clf_dropout, deterministic=deterministic, rng=rng)
    task = sums["task_sum"] / jnp.maximum(normalizer["examples"], 1.0)
    lm = sums["lm_sum"] / jnp.maximum(normalizer["lm_tokens"], 1.0)
    return task + ft.lm_coef * lm, {"task_loss": task, "lm_loss": lm}

  def train_batch(self, step: int) -> dict[str, np.ndarray]:
    batch = self.config.train.batch_size
    epoch, index = divmod(step, self.steps_per_epoch)
    rows = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.train_data))
    rows = process_rows(rows[index * batch:(index + 1) * batch])
    d = self.train_data
    return {"tokens": d.tokens[rows], "lengths": d.lengths[rows], "labels": d.labels[rows]}

  def eval_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    d = self.val_data
    for rows, weight in finetune_lib._eval_batches(d, batch_size):  # pylint: disable=protected-access
      rows, weight = process_rows(rows), process_rows(weight)
      yield {"tokens": d.tokens[rows], "lengths": d.lengths[rows], "labels": d.labels[rows], "weight": weight}

  def eval_step(self, params, batch) -> dict[str, jax.Array]:
    return finetune_lib.loss_sums(self.model_config, self.spec.kind, self.task_ids, params, batch,
                                  deterministic=True)

  def summarize(self, outputs: list[dict[str, np.ndarray]]) -> dict[str, float]:
    kind = self.spec.kind
    predictions = finetune_lib.predictions_from_outputs(
        kind, np.concatenate([o["outputs"] for o in outputs])[:len(self.val_data)])
    result = finetune_lib.compute_metrics(kind, predictions, self.val_data.labels)
    sums = {k: sum(float(o[k]) for o in outputs) for k in ("task_sum", "examples", "lm_sum", "lm_tokens")}
    result["task_loss"] = sums["task_sum"] / max(sums["examples"], 1.0)
    result["lm_loss"] = sums["lm_sum"] / max(sums["lm_tokens"], 1.0)
    return {f"val_{k}": v for k, v in result.items()}

  def flops_per_token(self) -> float:
    return metrics_lib.flops_per_token(self.model_config, self.train_data.tokens.shape[2])

  def on_best(self, workdir: pathlib.Path, params, step: int, record: dict) -> None:
    """Exports the new best model to `<workdir>/best` (process 0; every process joins the gather)."""
    host = gather_to_host(params)
    if jax.process_index() != 0:
      return
    validation = {k[len("val_"):]: v for k, v in record.items() if k.startswith("val_")}
    finetune_lib.export_model(workdir / "best", self.model_config, host, self.tokenizer, self.spec,
                              extra={"step": step, "metric": self.metric, "validation": validation,
                                     "init_from": self.config.init_from})

  def result(self, last: dict, early: dict) -> dict[str, Any]:
    best = early.get("best_record")
    return {**last, "metric": self.metric, "best_step": early.get("best_step"), "best_metric": early.get("best"),
            "best": None if best is None else {k[len("val_"):]: v for k, v in best.items() if k.startswith("val_")}}

  def finish(self, workdir: pathlib.Path, result: dict) -> None:
    logging.info("Best %s %s at step %s; the model is in %s.", self.metric, result.get("best_metric"),
                 result.get("best_step"), workdir / "best")


def gather_to_host(tree):
  """Host numpy copies of a (possibly multi-process sharded) tree, on every process."""
  if all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(tree)):
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def objective_class(config):
  """The objective a config asks for: `Distillation` with a `distill.teacher`, `GenerationFinetuning`
  (gptjax/train/seq2seq.py) for `finetune.task = 'generation'`, `Finetuning` with another `finetune` section, else
  `LanguageModeling`."""
  if schema.is_distillation(config):
    from gptjax.train import distill  # pylint: disable=g-import-not-at-top  (it subclasses LanguageModeling)
    return distill.Distillation
  if schema.is_finetuning(config) and config.finetune.task == "generation":
    from gptjax.train import seq2seq  # pylint: disable=g-import-not-at-top  (it imports this module)
    return seq2seq.GenerationFinetuning
  return Finetuning if schema.is_finetuning(config) else LanguageModeling


def make_objective(config, workdir: pathlib.Path, resume_meta: Optional[dict] = None):
  """The objective `objective_class(config)` built for this run."""
  return objective_class(config)(config, workdir, resume_meta)


def objective_identity(config) -> dict[str, Any]:
  """`identity(config)` of the objective `make_objective` would build, without building it."""
  return objective_class(config).identity(config)
