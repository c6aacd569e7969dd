"""Fine-tuned task heads: saved beside a model, loaded with it, and run on the inference engine.

A head (`gptjax/finetune.py` trains it) is a linear map on the final hidden state (after `ln_f`) at each
sequence's `<|extract|>` token: classification / entailment / regression sum the states of an example's sequences
(two orders for similarity) and apply it; multiple choice scores each answer. The transformer runs through
`LanguageModel.engine().forward(..., hidden_states='final')`, which buckets shapes and compiles once per bucket.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import seq2seq
from gptjax.tasks import TASK_TOKENS, TaskSpec, encode_records

SPEC_FILE, HEAD_FILE = "finetune.json", "head.safetensors"



@dataclasses.dataclass
class TaskHead:
  """The task and its head parameters, attached to a `LanguageModel` as `.head`."""
  spec: TaskSpec
  params: dict

  def save(self, directory: os.PathLike, extra: Optional[dict] = None) -> None:
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: np.asarray(v, np.float32) for k, v in self.params.items()}, str(directory / HEAD_FILE))
    info = {"spec": self.spec.to_dict(), "task_tokens": list(TASK_TOKENS), **(extra or {})}
    (directory / SPEC_FILE).write_text(json.dumps(info, indent=2) + "\n")


def load_head(directory: os.PathLike) -> Optional[TaskHead]:
  """The head saved in `directory` (a `seq2seq.GenerationHead` for a generation model), or None when it holds a
  plain language model."""
  directory = pathlib.Path(directory)
  if not (directory / SPEC_FILE).exists():
    return None
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  info = json.loads((directory / SPEC_FILE).read_text())
  if info["spec"].get("task") == seq2seq.TASK:  # Conditional generation: the task and template, no head weights.
    return seq2seq.GenerationHead(seq2seq.GenerationSpec.from_dict(info["spec"]))
  if not (directory / HEAD_FILE).exists():
    raise FileNotFoundError(f"{directory} has {SPEC_FILE} but no {HEAD_FILE}: the fine-tuned head is missing")
  spec = TaskSpec.from_dict(info["spec"])
  params = {k: jnp.asarray(v) for k, v in load_file(str(directory / HEAD_FILE)).items()}
  return TaskHead(spec, params)


def _checked_head(model, kinds: tuple[str, ...], method: str) -> TaskHead:
  head = getattr(model, "head", None)
  if head is None:
    raise ValueError(f"{method} needs a fine-tuned model (one with a task head, saved by gptjax fine-tuning); "
                     "this is a plain language model")
  if head.spec.kind not in kinds:
    other = {"choice": "choose", seq2seq.TASK: "predict"}.get(head.spec.kind, "classify")
    raise ValueError(f"This model was fine-tuned for {head.spec.task}: use LanguageModel.{other}, not {method}")
  if model.tokenizer is None:
    raise ValueError(f"{method} needs the model's tokenizer, and this model has none")
  return head


def predict_outputs(model, records: Sequence[tuple[str, dict]], batch_size: int = 32, *,
                    with_labels: bool = False, head: Optional[TaskHead] = None
                    ) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """Head outputs for `records` (read with `read_records`) with a fine-tuned `LanguageModel`.

  `head` overrides `model.head` (`choose` uses it to take any number of answers).

  Returns:
    (outputs, labels): outputs [E, C] logits, [E, 1] scores (regression) or [E, N] answer scores; labels as
    encoded (None unless `with_labels`).
  """
  head = head or _checked_head(model, ("classes", "regression", "choice"), "predict")
  ids = {t: model.tokenizer.token_to_id(t) for t in TASK_TOKENS}
  missing = [t for t, i in ids.items() if i is None]
  if missing:
    raise ValueError(f"The model's tokenizer lacks the task tokens {missing}: it was not saved by fine-tuning")
  max_length = head.spec.max_length or model.config.block_size
  data = encode_records(head.spec, model.tokenizer, ids, records, max_length, with_labels=with_labels)
  engine = model.engine()
  kernel_DC = np.asarray(head.params["kernel"], np.float32)
  bias_C = np.asarray(head.params["bias"], np.float32)
  outputs = []
  for lo in range(0, len(data), batch_size):
    tokens_BNL, lengths_BN = data.tokens[lo:lo + batch_size], data.lengths[lo:lo + batch_size]
    B, N, L = tokens_BNL.shape
    tokens_XL = tokens_BNL.reshape(B * N, L)
    mask_XL = np.arange(L)[None, :] < lengths_BN.reshape(B * N)[:, None]
    # The engine buckets the shapes; only the final hidden states come back (no [X, L, V] logits).
    final_XLD = engine.forward(tokens_XL, mask_XL, logits=False, hidden_states="final").final_BTD
    h_BND = final_XLD[np.arange(B * N), lengths_BN.reshape(B * N) - 1].reshape(B, N, -1)
    if head.spec.kind == "choice":
      outputs.append((h_BND @ kernel_DC)[..., 0] + bias_C[0])
    else:
      outputs.append(h_BND.sum(axis=1) @ kernel_DC + bias_C)
  return np.concatenate(outputs)[:len(data)], data.labels


def classify(model, inputs, *, probabilities: bool = False):
  """`LanguageModel.classify`: labels (or scores, for regression) of one input or a list of inputs.

  An input is a str (classification), a pair of str (entailment, similarity) or a dict of named fields.
  With `probabilities=True` each result is a {label: probability} dict instead.
  """
  head = _checked_head(model, ("classes", "regression"), "classify")
  single = isinstance(inputs, (str, dict)) or (isinstance(inputs, tuple) and all(isinstance(x, str) for x in inputs))
  batch = [inputs] if single else list(inputs)
  fields = head.spec.text_fields
  records = []
  for i, item in enumerate(batch):
    if isinstance(item, str):
      item = (item,)
    if not isinstance(item, dict):
      if len(item) != len(fields):
        raise ValueError(f"input {i}: {head.spec.task} takes {len(fields)} text(s) {fields}, got {len(item)}")
      item = dict(zip(fields, item))
    records.append((f"input {i}", item))
  outputs, _ = predict_outputs(model, records)
  if head.spec.kind == "regression":
    results = [float(x) for x in outputs[:, 0]]
  elif probabilities:
    probs = jax.nn.softmax(outputs, axis=-1)
    results = [dict(zip(head.spec.labels, map(float, p))) for p in np.asarray(probs)]
  else:
    results = [head.spec.labels[int(i)] for i in outputs.argmax(axis=-1)]
  return results[0] if single else results


def choose(model, context, choices, *, probabilities: bool = False):
  """`LanguageModel.choose`: the index of the best answer (or the softmax across answers) for one context and its
  list of answers, or for a list of contexts and a list of answer lists."""
  head = _checked_head(model, ("choice",), "choose")
  single = isinstance(context, str)
  contexts, answer_lists = ([context], [choices]) if single else (list(context), list(choices))
  if len(contexts) != len(answer_lists):
    raise ValueError(f"{len(contexts)} contexts but {len(answer_lists)} answer lists")
  spec = dataclasses.replace(head.spec, text_fields=("context",), choice_fields=("answers",), num_choices=0)
  results = []
  for i, (ctx, answers) in enumerate(zip(contexts, answer_lists)):
    if isinstance(answers, str) or len(answers) < 2:
      raise ValueError(f"input {i}: choose needs a list of at least 2 answers, got {answers!r}")
    sub = TaskHead(dataclasses.replace(spec, num_choices=len(answers)), head.params)
    outputs, _ = predict_outputs(model, [(f"input {i}", {"context": ctx, "answers": list(answers)})], head=sub)
    probs = np.asarray(jax.nn.softmax(outputs[0]))
    results.append([float(p) for p in probs] if probabilities else int(probs.argmax()))
  return results[0] if single else results
