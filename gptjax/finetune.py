"""GPT-1 fine-tuning: a linear head on the extract token, task loss + lambda * LM loss, metrics, inference.

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

Training is the one loop's (`gptjax.train`): `gptjax.train.objectives.Finetuning` turns this module's `loss_sums`
into the loop's objective, so fine-tuning shards over the mesh and accumulates gradients like pre-training.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax import paths
from gptjax.model import GPT, ModelConfig
from gptjax.tasks import TASK_TOKENS, TaskData, TaskSpec, encode_records, read_records  # noqa: F401  (read_records:
# gptjax.predict reads its data through this module)

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


class ClassifierHead(nn.Module):
  """GPT-1's linear head on the extract token's final hidden state, with logical axis names.

  The kernel is ('embed', 'classes'): its rows follow the model width's sharding ('embed' over fsdp) and its few
  columns stay whole, so the head shards over the mesh with the transformer and its gradients accumulate like any
  other parameter's. Parameters: kernel N(0, init_std) [D, outputs], bias 0 [outputs] (the `head.safetensors` names).

  Attributes:
    num_outputs: `TaskSpec.num_outputs`.
    init_std: the transformer's `init_std` (GPT-1: 0.02).
    clf_dropout: dropout on the head's input (GPT-1: 0.1).
  """
  num_outputs: int
  init_std: float = 0.02
  clf_dropout: float = 0.0

  @nn.compact
  def __call__(self, h_XD: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """[X, D] float32 extract states -> [X, outputs] (float32)."""
    h_XD = nn.Dropout(self.clf_dropout)(h_XD, deterministic=deterministic or self.clf_dropout == 0)
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(self.init_std),
                                                               ("embed", "classes")),
                        (h_XD.shape[-1], self.num_outputs), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("classes",)),
                      (self.num_outputs,), jnp.float32)
    return h_XD @ kernel + bias


def init_head(spec: TaskSpec, config: ModelConfig, rng: jax.Array, *, boxed: bool = False) -> dict:
  """The head's parameters: kernel N(0, init_std) [D, outputs], bias 0 [outputs].

  `boxed=True` keeps the `nn.LogicallyPartitioned` boxes (for the sharded train state's `eval_shape`).
  """
  head = ClassifierHead(spec.num_outputs, config.init_std)
  params = head.init(rng, jnp.zeros((1, config.emb_dim), jnp.float32))["params"]
  return dict(params) if boxed else dict(nn.meta.unbox(params))


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
    gpt_rng, head_rng = jax.random.split(rng)
    rngs = {"dropout": gpt_rng}
  logits_XLV, hidden_XLD = GPT(config).apply({"params": params["transformer"]}, tokens_XL,
                                             attention_mask_BL=mask_XL, deterministic=deterministic,
                                             return_hidden=True, rngs=rngs)
  extract_X = lengths_BN.reshape(B * N) - 1
  h_XD = jnp.take_along_axis(hidden_XLD, extract_X[:, None, None], axis=1)[:, 0].astype(jnp.float32)
  h_BND = h_XD.reshape(B, N, -1)
  head = params["head"]
  num_outputs = head["bias"].shape[0]
  module = ClassifierHead(num_outputs, config.init_std, clf_dropout)
  head_rngs = {} if deterministic else {"dropout": head_rng}
  if kind == "choice":
    # One score per answer: the head (one output) on each of the N states.
    outputs = module.apply({"params": head}, h_XD, deterministic=deterministic, rngs=head_rngs)[:, 0].reshape(B, N)
  else:
    # Similarity sums the states of both orders before the head (GPT-1); other tasks have N = 1.
    outputs = module.apply({"params": head}, h_BND.sum(axis=1), deterministic=deterministic, rngs=head_rngs)
  return outputs, logits_XLV, mask_XL


def lm_loss_sum(logits_XLV, tokens_XL, mask_XL, task_ids, example_weight_X=None):
  """Summed next-token cross-entropy over text targets, with the task tokens' logits left out of the softmax.

  Targets are positions t+1 whose token is real text: not padding and not one of `task_ids` (so `<|delimiter|>`
  and `<|extract|>` are never targets, nor is anything after the extract token).

  Returns:
    (sum of the targets' losses, number of target tokens), float32 scalars.
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
  return (nll * weight).sum(), weight.sum()


def lm_loss(logits_XLV, tokens_XL, mask_XL, task_ids, example_weight_X=None):
  """`lm_loss_sum` as a mean: (mean loss over the text targets, number of target tokens)."""
  total, count = lm_loss_sum(logits_XLV, tokens_XL, mask_XL, task_ids, example_weight_X)
  return total / jnp.maximum(count, 1.0), count


def task_loss_sum(kind: str, outputs, labels, weight_B=None):
  """Summed over examples: cross-entropy over classes/answers, or squared error for regression; and the count."""
  weight_B = jnp.ones(outputs.shape[0]) if weight_B is None else weight_B
  if kind == "regression":
    per_example = (outputs[:, 0] - labels) ** 2
  else:
    logp = jax.nn.log_softmax(outputs.astype(jnp.float32), axis=-1)
    per_example = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  return (per_example * weight_B).sum(), weight_B.sum()


def task_loss(kind: str, outputs, labels, weight_B=None):
  """Mean over examples of `task_loss_sum`'s per-example losses."""
  total, count = task_loss_sum(kind, outputs, labels, weight_B)
  return total / jnp.maximum(count, 1.0)


def loss_sums(config: ModelConfig, kind: str, task_ids, params, batch, *, clf_dropout: float = 0.0,
              deterministic: bool = True, rng=None) -> dict[str, jax.Array]:
  """The two terms of the objective as sums, with their counts, and the head outputs.

  Sums (not means) let a batch split into microbatches give the whole batch's loss exactly: the training loop
  divides each sum by the whole batch's count (`gptjax.train.objectives.Finetuning`).

  Args:
    batch: {'tokens': [B, N, L], 'lengths': [B, N], 'labels': [B], optional 'weight': [B] (0 for padding rows)}.

  Returns:
    {'task_sum', 'examples', 'lm_sum', 'lm_tokens', 'outputs'}.
  """
  outputs, logits_XLV, mask_XL = task_forward(config, kind, params, batch["tokens"], batch["lengths"],
                                              clf_dropout=clf_dropout, deterministic=deterministic, rng=rng)
  weight_B = batch.get("weight")
  B, N, L = batch["tokens"].shape
  weight_X = None if weight_B is None else jnp.repeat(weight_B, N)
  task_sum, examples = task_loss_sum(kind, outputs, batch["labels"], weight_B)
  lm_sum, lm_tokens = lm_loss_sum(logits_XLV, batch["tokens"].reshape(B * N, L), mask_XL, task_ids, weight_X)
  return {"task_sum": task_sum, "examples": examples, "lm_sum": lm_sum, "lm_tokens": lm_tokens, "outputs": outputs}


def losses(config: ModelConfig, kind: str, task_ids, params, batch, *, lm_coef: float, clf_dropout: float = 0.0,
           deterministic: bool = True, rng=None):
  """The fine-tuning objective: task loss + lm_coef * LM loss (GPT-1 eq. 5), each a mean over its own count.

  Args:
    batch: {'tokens': [B, N, L], 'lengths': [B, N], 'labels': [B], optional 'weight': [B] (0 for padding rows)}.

  Returns:
    (total, aux) with aux = {'task_loss', 'lm_loss', 'outputs'}.
  """
  sums = loss_sums(config, kind, task_ids, params, batch, clf_dropout=clf_dropout, deterministic=deterministic,
                   rng=rng)
  task = sums["task_sum"] / jnp.maximum(sums["examples"], 1.0)
  lm = sums["lm_sum"] / jnp.maximum(sums["lm_tokens"], 1.0)
  return task + lm_coef * lm, {"task_loss": task, "lm_loss": lm, "outputs": sums["outputs"]}


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


def _eval_batches(data: TaskData, batch_size: int):
  """Fixed-shape batches as (rows, weight); the last is padded with copies of row 0 (weight 0)."""
  for lo in range(0, len(data), batch_size):
    index = np.arange(lo, lo + batch_size)
    weight = (index < len(data)).astype(np.float32)
    yield np.where(index < len(data), index, 0), weight


# ----------------------------------------------------------------------------------------------------------------
# Export (the training loop's objective calls it for each new best model; gptjax/train/objectives.py).


def export_model(directory: os.PathLike, config: ModelConfig, params: dict, tokenizer, spec: TaskSpec,
                 extra: Optional[dict] = None) -> pathlib.Path:
  """Writes the fine-tuned model (HF folder + tokenizer + head) to `directory`, replacing it (`replace_folder`)."""
  from gptjax.language_model import LanguageModel  # pylint: disable=g-import-not-at-top
  model = LanguageModel(config, jax.device_get(params["transformer"]), tokenizer)
  model.head = TaskHead(spec, jax.device_get(params["head"]))
  return replace_folder(directory, model, extra)


def replace_folder(directory: os.PathLike, model, extra: Optional[dict] = None) -> pathlib.Path:
  """Saves `model` (a `LanguageModel` with its `head`) to `directory`, replacing it atomically: a reader sees the
  old model or the new one, never half of one. A cloud `directory` has no atomic folder rename: the old model is
  removed, then the new one uploaded with the head's spec file (what `gptjax.load` looks for) last."""
  if paths.is_uri(directory):
    with tempfile.TemporaryDirectory(prefix="gptjax-") as staging:
      model.save(staging)
      model.head.save(staging, extra)
      target = paths.path(directory)
      if target.exists():
        target.rmtree()
      paths.upload_dir(staging, target, last=SPEC_FILE)
    return target
  directory = pathlib.Path(directory)
  staging = directory.with_name(f"{directory.name}.tmp-{uuid.uuid4().hex}")
  model.save(staging)
  model.head.save(staging, extra)
  old = directory.with_name(f"{directory.name}.old-{uuid.uuid4().hex}")
  if directory.exists():
    os.replace(directory, old)
  os.replace(staging, directory)
  shutil.rmtree(old, ignore_errors=True)
  return directory
