"""GPT-1 fine-tuning: task input transformations, a linear head on the extract token, the auxiliary LM loss.

Radford et al. (2018), Figure 1: one pre-trained decoder; structured inputs become token sequences framed by three
tokens added to the vocabulary (`<|start|>`, `<|delimiter|>`, `<|extract|>`); a linear head reads the final hidden
state at the `<|extract|>` token. Tasks (`TaskSpec.task`):

  classification    start text extract                                   -> softmax over the labels
  entailment        start premise delim hypothesis extract               -> softmax over the labels
  similarity        start a delim b extract  AND  start b delim a extract -> the two states summed, then the head
  multiple_choice   start context delim answer_i extract, for each i     -> one score per answer, softmax across

`similarity` and the other label tasks may instead be regression (`regression=True`, e.g. STS-B): one output,
squared-error loss, Pearson/Spearman metrics.

Loss: task loss + `lm_coef` * language-modelling loss on the same sequences (GPT-1's lambda = 0.5; 0 turns it off).
The LM loss is the pre-training loss restricted to TEXT: targets are the tokens of the fields only (never a task
token, never padding), and the softmax runs over the vocabulary without the task tokens' logits. So it is exactly the
pre-training objective on the task's text; it does not teach the model to emit `<|delimiter|>`/`<|extract|>` (which
would mean learning where fields were truncated), and the new rows learn only as inputs, through the task loss.
(The original code also targeted the delimiter and extract tokens; this is the one deliberate difference.)

Field text is always encoded as plain text: a literal `<|extract|>` or `<|endoftext|>` inside a review is just
characters, so task tokens come only from the format.

Padding: sequences are RIGHT-padded to one static length per run (one compile); the model's positions come from the
attention mask, so the real tokens' positions are 0..n-1 either way, and the head gathers the hidden state at each
sequence's own extract index.

Truncation (inputs longer than `max_length`, which defaults to the model's context), as GPT-1: the context is cut,
never the answer. A classification text keeps its beginning (as the original code). A premise or multiple-choice
context keeps its END, the part next to the hypothesis/answer (RACE puts the question there); the hypothesis/answer
is never cut, and an example whose answer alone does not fit is an error that names its line. Similarity has no
answer: the longer text is cut first, each keeping its beginning, and both orders use the same cut texts. With
`truncate=False` every over-long example is an error. The number of truncated examples is logged.

A fine-tuned model is saved as a Hugging Face folder (the grown embedding and the tokenizer with its task tokens)
plus `finetune.json` (the task) and `head.safetensors`; `gptjax.load` restores the head, and
`LanguageModel.classify` / `.choose` use it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import importlib
import json
import os
import pathlib
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from gptjax import optim
from gptjax.model import GPT, ModelConfig

START, DELIMITER, EXTRACT = "<|start|>", "<|delimiter|>", "<|extract|>"
TASK_TOKENS = (START, DELIMITER, EXTRACT)
TASKS = ("classification", "entailment", "similarity", "multiple_choice")
# Metrics a run can select its best checkpoint by; all are "higher is better".
CLASS_METRICS, REGRESSION_METRICS = ("accuracy", "f1", "mcc"), ("pearson", "spearman")
SPEC_FILE, HEAD_FILE = "finetune.json", "head.safetensors"
_NUM_FIELDS = {"classification": 1, "entailment": 2, "similarity": 2}


# ----------------------------------------------------------------------------------------------------------------
# The task: what the fields are, what the labels are, how a record becomes token sequences.


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What a fine-tuning task reads and predicts. Saved as `finetune.json` beside the model.

  Attributes:
    task: One of `TASKS`.
    text_fields: classification: the text field; entailment: (premise, hypothesis); similarity: the two texts;
      multiple_choice: the context field(s), joined with a space (e.g. COPA's premise and question).
    choice_fields: multiple_choice only: one field per answer, or a single field holding a list of answers.
    label_field: The label's field; for multiple_choice the 0-based index of the right answer.
    labels: The label set (classification/entailment/similarity); index i is head output i. Empty: the sorted
      distinct labels of the training data.
    regression: One real-valued output trained with squared error (e.g. STS-B similarity scores).
    max_length: Longest sequence in tokens, task tokens included; 0 means the model's context.
    truncate: Shorten over-long text by the policy in the module docstring; False makes it an error.
    num_choices: multiple_choice: answers per example (found in the data when 0).
  """

  task: str
  text_fields: tuple[str, ...]
  choice_fields: tuple[str, ...] = ()
  label_field: str = "label"
  labels: tuple[str, ...] = ()
  regression: bool = False
  max_length: int = 0
  truncate: bool = True
  num_choices: int = 0

  def __post_init__(self):
    object.__setattr__(self, "text_fields", tuple(self.text_fields))
    object.__setattr__(self, "choice_fields", tuple(self.choice_fields))
    object.__setattr__(self, "labels", tuple(str(label) for label in self.labels))
    if self.task not in TASKS:
      raise ValueError(f"Unknown task type {self.task!r}; expected one of {TASKS}")
    if self.task == "multiple_choice":
      if not self.text_fields or not self.choice_fields:
        raise ValueError("multiple_choice needs text_fields (the context) and choice_fields (the answers), got "
                         f"text_fields={self.text_fields}, choice_fields={self.choice_fields}")
      if self.regression or self.labels:
        raise ValueError("multiple_choice predicts an answer index: leave regression False and labels empty")
    else:
      want = _NUM_FIELDS[self.task]
      if len(self.text_fields) != want:
        raise ValueError(f"{self.task} reads {want} text field(s), got text_fields={self.text_fields}")
      if self.choice_fields:
        raise ValueError(f"choice_fields is for multiple_choice, not {self.task}")
      if self.regression and self.labels:
        raise ValueError(f"A regression task has no label set, got labels={self.labels}")
    if self.max_length < 0:
      raise ValueError(f"max_length must be >= 0 (0 = the model's context), got {self.max_length}")

  @classmethod
  def from_config(cls, config) -> "TaskSpec":
    """From the `finetune` section of a config (a ConfigDict or dict)."""
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{n: config[n] for n in names if n in config and config[n] is not None})

  @property
  def num_outputs(self) -> int:
    """Width of the head: one score per label, or one number (regression, or per answer)."""
    return 1 if self.regression or self.task == "multiple_choice" else len(self.labels)

  @property
  def kind(self) -> str:
    """'choice', 'regression' or 'classes': how outputs are read and scored."""
    return "choice" if self.task == "multiple_choice" else "regression" if self.regression else "classes"

  def to_dict(self) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "TaskSpec":
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


def add_task_tokens(tokenizer) -> dict[str, int]:
  """Adds `<|start|>`, `<|delimiter|>`, `<|extract|>` to `tokenizer` (a no-op when present); returns their ids."""
  return dict(zip(TASK_TOKENS, tokenizer.add_special_tokens(list(TASK_TOKENS))))


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


class TooLongError(ValueError):
  """An example that does not fit `max_length` under the truncation policy."""


def format_sequences(task: str, segments: Sequence[Any], ids: dict[str, int], max_length: int,
                     truncate: bool = True) -> tuple[list[list[int]], bool]:
  """Token sequences of one example in the GPT-1 layout (module docstring), truncated to `max_length`.

  Args:
    task: One of `TASKS`.
    segments: Token ids: [text] (classification), [premise, hypothesis] (entailment), [a, b] (similarity),
      [context, [answer_0, answer_1, ...]] (multiple_choice).
    ids: Task token ids from `add_task_tokens`.
    max_length: Longest allowed sequence, task tokens included.
    truncate: Shorten the text / first segment; False raises instead.

  Returns:
    (sequences, truncated): one sequence (two for similarity, one per answer for multiple_choice), and whether any
    text was cut.

  Raises:
    TooLongError: the example cannot fit (answer too long, or `truncate=False`).
  """
  start, delim, extract = ids[START], ids[DELIMITER], ids[EXTRACT]
  if task == "classification":
    (text,) = segments
    room = max_length - 2
    if len(text) > room:
      _check_truncatable(truncate, len(text) + 2, max_length, "text")
      if room < 1:
        raise TooLongError(f"max_length={max_length} leaves no room for text between the 2 task tokens")
    return [[start, *text[:room], extract]], len(text) > room
  if task == "entailment":
    premise, hypothesis, cut = _fit_pair(*segments, max_length, truncate)
    return [[start, *premise, delim, *hypothesis, extract]], cut
  if task == "similarity":
    a, b, cut = _fit_both(*segments, max_length, truncate)
    return [[start, *a, delim, *b, extract], [start, *b, delim, *a, extract]], cut
  if task == "multiple_choice":
    context, answers = segments
    pairs = [_fit_pair(context, answer, max_length, truncate) for answer in answers]
    return [[start, *c, delim, *a, extract] for c, a, _ in pairs], any(cut for *_, cut in pairs)
  raise ValueError(f"Unknown task type {task!r}; expected one of {TASKS}")


def _fit_pair(first, second, max_length, truncate):
  """Cuts the start of `first` so that start + first + delim + second + extract fits; `second` is never cut."""
  total = len(first) + len(second) + 3
  if total <= max_length:
    return first, second, False
  _check_truncatable(truncate, total, max_length, "premise/context")
  if len(second) + 4 > max_length:  # At least one token of the first segment must remain.
    raise TooLongError(f"the hypothesis/answer alone is {len(second)} tokens: with the first segment (>= 1 token) "
                       f"and 3 task tokens it exceeds max_length={max_length}, and it is never truncated")
  keep = max_length - 3 - len(second)
  return first[len(first) - keep:], second, True


def _fit_both(a, b, max_length, truncate):
  """Similarity has no answer: the longer text is cut first, each keeping its beginning; both orders share them."""
  room = max_length - 3
  if len(a) + len(b) <= room:
    return a, b, False
  _check_truncatable(truncate, len(a) + len(b) + 3, max_length, "longer text")
  if room < 2:
    raise TooLongError(f"max_length={max_length} leaves no room for two texts between the 3 task tokens")
  if len(a) >= len(b):
    keep_b = min(len(b), room // 2)
    return a[:room - keep_b], b[:keep_b], True
  keep_a = min(len(a), room // 2)
  return a[:keep_a], b[:room - keep_a], True


def _check_truncatable(truncate, total, max_length, what):
  if not truncate:
    raise TooLongError(f"{total} tokens exceed max_length={max_length} and truncate=False (the {what} would be cut)")


# ----------------------------------------------------------------------------------------------------------------
# Reading records: JSONL / CSV / TSV files with named fields, or TFDS datasets.


def read_records(source: str, *, default_split: str = "train", tfds_data_dir: Optional[str] = None,
                 download: bool = True) -> list[tuple[str, dict]]:
  """Reads the examples of `source` as (location, record) pairs; the location names the line for errors.

  Args:
    source: `path.jsonl` (one JSON object per line; `.json` too), `path.csv`, `path.tsv` (a header row names the
      fields), or `tfds:<name>[/<config>][:<split>]` (e.g. `tfds:glue/sst2:validation`).
    default_split: The TFDS split when `source` names none.
    tfds_data_dir: TFDS data_dir (None: $TFDS_DATA_DIR or ~/tensorflow_datasets).
    download: Let TFDS download and prepare a dataset not yet in `tfds_data_dir`.
  """
  if source.startswith("tfds:"):
    return _read_tfds(source[len("tfds:"):], default_split, tfds_data_dir, download)
  path = pathlib.Path(source).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"No such data file: {path} (expected .jsonl, .json, .csv, .tsv or tfds:<name>)")
  suffix = path.suffix.lower()
  if suffix in (".jsonl", ".json"):
    records = []
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{number}: not valid JSON ({e})") from None
        if not isinstance(record, dict):
          raise ValueError(f"{path}:{number}: expected a JSON object with named fields, got a JSON "
                           f"{type(record).__name__}")
        records.append((f"{path}:{number}", record))
    return records
  if suffix in (".csv", ".tsv"):
    with open(path, encoding="utf-8", newline="") as f:
      reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
      return [(f"{path}:{reader.line_num}", dict(row)) for row in reader]
  raise ValueError(f"Unknown data file type {path.suffix!r} for {path}: expected .jsonl, .json, .csv or .tsv")


def _read_tfds(spec: str, default_split: str, data_dir, download) -> list[tuple[str, dict]]:
  import tensorflow_datasets as tfds  # Slow to import; only TFDS sources need it.
  name, split = spec, default_split
  head, _, tail = spec.rpartition(":")
  if head and not tail.replace(".", "").isdigit():
    name, split = head, tail
  builder = _tfds_builder(tfds, name, data_dir)
  if not builder.is_prepared():
    build_cmd = f"tfds build {name} --file_format=array_record" + (f" --data_dir {data_dir}" if data_dir else "")
    if not download:
      raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}: run `{build_cmd}`")
    try:
      builder.download_and_prepare()
    except Exception as e:
      raise RuntimeError(f"Could not download and prepare TFDS dataset {name!r}: {e}. Offline, run "
                         f"`{build_cmd}` elsewhere and copy the folder.") from e
  splits = sorted(builder.info.splits)  # Empty under tfds.testing.mock_data, which serves any split name.
  if splits and split not in splits:
    raise ValueError(f"TFDS dataset {name!r} has no split {split!r}; it has {splits}")
  source = builder.as_data_source(split=split)
  features = builder.info.features
  records = []
  for i in range(len(source)):
    example = source[i]
    record = {}
    for key, value in example.items():
      value = np.asarray(value) if not isinstance(value, (str, bytes)) else value
      if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
      if isinstance(value, bytes):
        value = value.decode("utf-8")
      elif isinstance(value, np.ndarray):
        value = [v.decode("utf-8") if isinstance(v, bytes) else v.item() for v in value]
      names = getattr(features[key], "names", None) if key in features else None
      if names and isinstance(value, int) and 0 <= value < len(names):
        record[f"{key}@index"] = value  # ClassLabel: the name, and the index for index-valued labels (answers).
        value = names[value]
      record[key] = value
    records.append((f"tfds:{name} {split} example {i}", record))
  return records


def _tfds_builder(tfds, name, data_dir):
  try:
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    pass
  # Without TensorFlow, tfds does not register every dataset module at import (e.g. glue): import its module.
  family = name.split("/")[0].split(":")[0]
  for module in (f"tensorflow_datasets.text.{family}", f"tensorflow_datasets.datasets.{family}"):
    with contextlib.suppress(ImportError):
      importlib.import_module(module)
  try:
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"TFDS has no dataset {name!r} (check the name, e.g. glue/sst2)") from None
  except ModuleNotFoundError as e:
    raise ValueError(f"TFDS dataset {name!r} needs {e.name!r} to be built, which is not installed") from None


# ----------------------------------------------------------------------------------------------------------------
# Records -> arrays.


@dataclasses.dataclass
class TaskData:
  """Encoded examples, right-padded.

  Attributes:
    tokens: int32 [E, N, L]; N = sequences per example (1, 2 for similarity, the answers for multiple_choice).
    lengths: int32 [E, N], real tokens per sequence (the extract token is at length - 1).
    labels: [E] int32 label/answer index, float32 for regression, or None when the records have no labels.
    num_truncated: examples whose text was cut.
  """
  tokens: np.ndarray
  lengths: np.ndarray
  labels: Optional[np.ndarray]
  num_truncated: int = 0

  def __len__(self) -> int:
    return self.tokens.shape[0]

  def padded_to(self, length: int) -> "TaskData":
    extra = length - self.tokens.shape[2]
    return dataclasses.replace(self, tokens=np.pad(self.tokens, ((0, 0), (0, 0), (0, extra))))


def resolve_spec(spec: TaskSpec, records: Sequence[tuple[str, dict]]) -> TaskSpec:
  """Fills what the training data decides: the label set (when empty) and the number of answers."""
  updates = {}
  if spec.kind == "classes" and not spec.labels:
    values = {_label_text(spec, where, record) for where, record in records}
    updates["labels"] = tuple(sorted(values, key=lambda v: (not v.lstrip("-").isdigit(), int(v) if
                                                            v.lstrip("-").isdigit() else 0, v)))
    if len(updates["labels"]) < 2:
      raise ValueError(f"The training data has {len(updates['labels'])} distinct label(s) {updates['labels']} in "
                       f"field {spec.label_field!r}: a classifier needs at least 2")
  if spec.kind == "choice" and not spec.num_choices and records:
    updates["num_choices"] = len(_answers(spec, *records[0]))
  return dataclasses.replace(spec, **updates) if updates else spec


def encode_records(spec: TaskSpec, tokenizer, ids: dict[str, int], records: Sequence[tuple[str, dict]],
                   max_length: int, *, with_labels: bool = True) -> TaskData:
  """Encodes records into right-padded arrays (length: the longest sequence), checking every field and label.

  Raises:
    ValueError: a missing field, a label outside the label set, a wrong number of answers, or an example too long
      (`TooLongError`), each naming the record's line.
  """
  if not records:
    raise ValueError("No examples to encode")
  texts, layout = [], []  # All texts are encoded in one batch (fast), then regrouped per record.
  for where, record in records:
    parts = [_field(record, f, where) for f in spec.text_fields]
    if spec.kind == "choice":
      answers = _answers(spec, where, record)
      if len(answers) != spec.num_choices:
        raise ValueError(f"{where}: {len(answers)} answers, but the task has {spec.num_choices} per example")
      parts = [" ".join(parts)] + answers
    for value, name in zip(parts, list(spec.text_fields) + ["answer"] * len(parts)):
      if not isinstance(value, str):
        raise ValueError(f"{where}: field {name!r} must be text, got {type(value).__name__} {value!r}")
    layout.append((len(texts), len(parts)))
    texts.extend(parts)
  with _plain_text(tokenizer):
    encoded = tokenizer.encode_batch(texts)
  sequences, labels, truncated = [], [], 0
  for (where, record), (offset, count) in zip(records, layout):
    pieces = encoded[offset:offset + count]
    segments = [pieces[0], pieces[1:]] if spec.kind == "choice" else pieces
    try:
      seqs, cut = format_sequences(spec.task, segments, ids, max_length, spec.truncate)
    except TooLongError as e:
      raise TooLongError(f"{where}: {e}") from None
    truncated += cut
    sequences.append(seqs)
    if with_labels:
      labels.append(_label_value(spec, where, record))
  n, length = len(sequences[0]), max(len(s) for seqs in sequences for s in seqs)
  tokens = np.zeros((len(sequences), n, length), np.int32)
  lengths = np.zeros((len(sequences), n), np.int32)
  for i, seqs in enumerate(sequences):
    for j, seq in enumerate(seqs):
      tokens[i, j, :len(seq)] = seq
      lengths[i, j] = len(seq)
  label_array = None
  if with_labels:
    label_array = np.asarray(labels, np.float32 if spec.kind == "regression" else np.int32)
  if truncated:
    logging.warning("%d of %d examples were longer than max_length=%d and were truncated (%s).", truncated,
                    len(records), max_length, "context/premise start cut" if spec.task != "classification"
                    else "text end cut")
  return TaskData(tokens, lengths, label_array, truncated)


@contextlib.contextmanager
def _plain_text(tokenizer) -> Iterator[None]:
  """Encodes special-token strings inside field text as ordinary text while active."""
  backend = tokenizer.backend
  previous = backend.encode_special_tokens
  backend.encode_special_tokens = True
  try:
    yield
  finally:
    backend.encode_special_tokens = previous


def _field(record: dict, name: str, where: str):
  if name not in record or record[name] is None:
    raise ValueError(f"{where}: missing field {name!r}; the record has fields {sorted(record)}")
  return record[name]


def _answers(spec: TaskSpec, where: str, record: dict) -> list:
  if len(spec.choice_fields) == 1:
    answers = _field(record, spec.choice_fields[0], where)
    if not isinstance(answers, list):
      raise ValueError(f"{where}: field {spec.choice_fields[0]!r} must be a list of answers (or name one "
                       f"choice field per answer), got {type(answers).__name__}")
    return answers
  return [_field(record, name, where) for name in spec.choice_fields]


def _label_text(spec: TaskSpec, where: str, record: dict) -> str:
  value = _field(record, spec.label_field, where)
  if isinstance(value, float) and value.is_integer():
    value = int(value)
  return str(value)


def _label_value(spec: TaskSpec, where: str, record: dict):
  if spec.kind == "regression":
    value = _field(record, spec.label_field, where)
    try:
      return float(value)
    except (TypeError, ValueError):
      raise ValueError(f"{where}: label {value!r} in field {spec.label_field!r} is not a number, and this is a "
                       f"regression task") from None
  if spec.kind == "choice":
    value = record.get(f"{spec.label_field}@index", _field(record, spec.label_field, where))
    try:
      index = int(value)
    except (TypeError, ValueError):
      index = -1
    if str(value).strip() != str(index) or not 0 <= index < spec.num_choices:
      raise ValueError(f"{where}: label {value!r} in field {spec.label_field!r} is not an answer index in "
                       f"[0, {spec.num_choices})")
    return index
  label = _label_text(spec, where, record)
  if label not in spec.labels:
    raise ValueError(f"{where}: label {label!r} in field {spec.label_field!r} is not in the label set "
                     f"{list(spec.labels)}")
  return spec.labels.index(label)


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
# A fine-tuned head, saved beside the model; inference.


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
  """The head saved in `directory`, or None when it holds a plain language model."""
  directory = pathlib.Path(directory)
  if not (directory / SPEC_FILE).exists():
    return None
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  if not (directory / HEAD_FILE).exists():
    raise FileNotFoundError(f"{directory} has {SPEC_FILE} but no {HEAD_FILE}: the fine-tuned head is missing")
  info = json.loads((directory / SPEC_FILE).read_text())
  spec = TaskSpec.from_dict(info["spec"])
  params = {k: jnp.asarray(v) for k, v in load_file(str(directory / HEAD_FILE)).items()}
  return TaskHead(spec, params)


def _checked_head(model, kinds: tuple[str, ...], method: str) -> TaskHead:
  head = getattr(model, "head", None)
  if head is None:
    raise ValueError(f"{method} needs a fine-tuned model (one with a task head, saved by gptjax fine-tuning); "
                     "this is a plain language model")
  if head.spec.kind not in kinds:
    other = "choose" if head.spec.kind == "choice" else "classify"
    raise ValueError(f"This model was fine-tuned for {head.spec.task}: use LanguageModel.{other}, not {method}")
  if model.tokenizer is None:
    raise ValueError(f"{method} needs the model's tokenizer, and this model has none")
  return head


@functools.lru_cache(maxsize=8)
def _jitted_forward(config: ModelConfig, kind: str):
  return jax.jit(lambda params, tokens, lengths: task_forward(config, kind, params, tokens, lengths)[0])


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
  # One shape per length bucket (multiples of 32) keeps the number of compiles small.
  length = min(-(-data.tokens.shape[2] // 32) * 32, model.config.block_size)
  data = data.padded_to(max(length, data.tokens.shape[2]))
  forward = _jitted_forward(model.config, head.spec.kind)
  params = {"transformer": model.params, "head": head.params}
  outputs = [np.asarray(forward(params, data.tokens[rows], data.lengths[rows]))
             for rows, _ in _eval_batches(data, batch_size)]
  return np.concatenate(outputs)[:len(data)], data.labels


def _eval_batches(data: TaskData, batch_size: int):
  """Fixed-shape batches as (rows, weight); the last is padded with copies of row 0 (weight 0)."""
  for lo in range(0, len(data), batch_size):
    index = np.arange(lo, lo + batch_size)
    weight = (index < len(data)).astype(np.float32)
    yield np.where(index < len(data), index, 0), weight


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


# ----------------------------------------------------------------------------------------------------------------
# Training.


def _load_pretrained(init_from: str):
  from gptjax import language_model  # pylint: disable=g-import-not-at-top
  if not init_from or init_from == "scratch":
    raise ValueError("Fine-tuning needs a pre-trained model: set init_from to a Hugging Face folder or hub name "
                     "(e.g. openai-gpt, gpt2) or a gptjax model folder")
  model = language_model.load(init_from)
  if model.tokenizer is None:
    raise ValueError(f"{init_from} has no tokenizer files: fine-tuning needs the tokenizer the model was "
                     f"pre-trained with (save it beside the weights)")
  return model


def export_model(directory: os.PathLike, config: ModelConfig, params: dict, tokenizer, spec: TaskSpec,
                 extra: Optional[dict] = None) -> pathlib.Path:
  """Writes the fine-tuned model (HF folder + tokenizer + head) to `directory`, replacing it atomically."""
  from gptjax.language_model import LanguageModel  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory)
  staging = directory.with_name(f"{directory.name}.tmp-{uuid.uuid4().hex}")
  model = LanguageModel(config, jax.device_get(params["transformer"]), tokenizer)
  model.head = TaskHead(spec, jax.device_get(params["head"]))
  model.save(staging)
  if extra:
    model.head.save(staging, extra)
  old = directory.with_name(f"{directory.name}.old-{uuid.uuid4().hex}")
  if directory.exists():
    os.replace(directory, old)
  os.replace(staging, directory)
  shutil.rmtree(old, ignore_errors=True)
  return directory


def train_and_evaluate(config, workdir: os.PathLike) -> dict[str, Any]:
  """Fine-tunes `config.init_from` on `config.finetune`; keeps the best model by validation metric.

  Writes to `workdir`: `best/` (the best model: `gptjax.load(workdir / 'best')` restores it with its head),
  `checkpoints/` (orbax, the latest step: a rerun resumes there), `metrics.jsonl`.

  Returns:
    {'best_step', 'best_metric', 'metric', 'best': {val metrics of the best eval}, 'steps'}.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ft, opt, train, evaluation = config.finetune, config.opt, config.train, config.eval
  workdir = pathlib.Path(workdir).expanduser().absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  spec = TaskSpec.from_config(ft)
  if not 0 <= ft.lm_coef:
    raise ValueError(f"finetune.lm_coef must be >= 0, got {ft.lm_coef}")

  base = _load_pretrained(config.init_from)
  tokenizer = base.tokenizer
  ids = add_task_tokens(tokenizer)
  rng = jax.random.key(config.seed)
  model_cfg = dataclasses.replace(base.config, dropout_rate=ft.dropout_rate,
                                  attention_dropout_rate=ft.dropout_rate)
  model_cfg, gpt_params = grow_embedding(model_cfg, base.params, tokenizer.vocab_size, jax.random.fold_in(rng, 1))
  max_length = spec.max_length or model_cfg.block_size
  if max_length > model_cfg.block_size:
    raise ValueError(f"finetune.max_length={max_length} exceeds the model's context {model_cfg.block_size}")

  kwargs = dict(tfds_data_dir=ft.get("tfds_data_dir") or None, download=ft.get("download", True))
  train_records = read_records(ft.train_data, default_split="train", **kwargs)
  val_records = read_records(ft.val_data, default_split="validation", **kwargs)
  spec = resolve_spec(spec, train_records)
  train_data = encode_records(spec, tokenizer, ids, train_records, max_length)
  val_data = encode_records(spec, tokenizer, ids, val_records, max_length)
  length = max(train_data.tokens.shape[2], val_data.tokens.shape[2])
  train_data, val_data = train_data.padded_to(length), val_data.padded_to(length)
  metric = ft.metric or ("pearson" if spec.kind == "regression" else "accuracy")
  allowed = REGRESSION_METRICS if spec.kind == "regression" else ("accuracy",) if spec.kind == "choice" \
      else CLASS_METRICS
  if metric not in allowed:
    raise ValueError(f"finetune.metric={metric!r} does not apply to this task; choose from {allowed}")

  batch_size = train.batch_size
  steps_per_epoch = len(train_data) // batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"{len(train_data)} training examples are fewer than one batch (batch_size={batch_size})")
  total_steps = train.epochs * steps_per_epoch
  tx, schedule = optim.make_optimizer(
      lr=opt.lr, warmup_steps=int(opt.warmup_fraction * total_steps), total_steps=total_steps,
      min_lr_ratio=opt.min_lr_ratio, weight_decay=opt.weight_decay, b1=opt.b1, b2=opt.b2, eps=opt.eps,
      grad_clip_norm=opt.grad_clip_norm)
  params = {"transformer": gpt_params, "head": init_head(spec, model_cfg, jax.random.fold_in(rng, 2))}
  opt_state = tx.init(params)
  task_ids = tuple(ids.values())
  loss_fn = functools.partial(losses, model_cfg, spec.kind, task_ids, lm_coef=ft.lm_coef,
                              clf_dropout=ft.clf_dropout)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, batch, step):
    step_rng = jax.random.fold_in(jax.random.fold_in(rng, 3), step)
    grad_fn = jax.value_and_grad(lambda p: loss_fn(p, batch, deterministic=False, rng=step_rng), has_aux=True)
    (loss, aux), grads = grad_fn(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    return params, opt_state, {"loss": loss, "task_loss": aux["task_loss"], "lm_loss": aux["lm_loss"]}

  @jax.jit
  def eval_step(params, batch):
    _, aux = loss_fn(params, batch, deterministic=True)
    return aux

  def evaluate(params) -> dict[str, float]:
    outputs, sums = [], np.zeros(3)
    for rows, weight in _eval_batches(val_data, evaluation.batch_size):
      aux = eval_step(params, {"tokens": val_data.tokens[rows], "lengths": val_data.lengths[rows],
                               "labels": val_data.labels[rows], "weight": weight})
      outputs.append(np.asarray(aux["outputs"]))
      n = weight.sum()
      sums += np.array([float(aux["task_loss"]) * n, float(aux["lm_loss"]) * n, n])
    predictions = predictions_from_outputs(spec.kind, np.concatenate(outputs)[:len(val_data)])
    result = compute_metrics(spec.kind, predictions, val_data.labels)
    result.update(task_loss=sums[0] / sums[2], lm_loss=sums[1] / sums[2])
    return result

  manager = ocp.CheckpointManager(workdir / "checkpoints", options=ocp.CheckpointManagerOptions(max_to_keep=1))
  progress = {"step": 0, "best_metric": None, "best_step": None, "best": None, "evals_since_best": 0,
              "stopped": False}
  if manager.latest_step() is not None:
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore({"params": params, "opt_state": opt_state}),
        progress=ocp.args.JsonRestore()))
    params, opt_state = restored.state["params"], restored.state["opt_state"]
    progress = dict(restored.progress)
    logging.info("Resumed from %s at step %d", workdir / "checkpoints", progress["step"])
    print(f"resumed at step {progress['step']}", flush=True)

  eval_every = train.eval_every or steps_per_epoch
  metrics_file = open(workdir / "metrics.jsonl", "a", encoding="utf-8")  # pylint: disable=consider-using-with
  log = lambda row: (metrics_file.write(json.dumps(row) + "\n"), metrics_file.flush())
  print(f"fine-tuning {spec.task} ({len(train_data)} train / {len(val_data)} val examples, {length} tokens, "
        f"labels {list(spec.labels) or spec.kind}) for {total_steps} steps", flush=True)
  started = time.time()
  step = progress["step"]
  while step < total_steps and not progress["stopped"]:
    epoch, index = divmod(step, steps_per_epoch)
    order = np.random.default_rng([config.seed, epoch]).permutation(len(train_data))
    rows = order[index * batch_size:(index + 1) * batch_size]
    batch = {"tokens": train_data.tokens[rows], "lengths": train_data.lengths[rows],
             "labels": train_data.labels[rows]}
    params, opt_state, stats = train_step(params, opt_state, batch, step)
    step += 1
    if step % train.log_every == 0 or step == total_steps:
      stats = {k: float(v) for k, v in stats.items()}
      if not np.isfinite(stats["loss"]):
        raise FloatingPointError(f"Loss is {stats['loss']} at step {step}")
      log({"step": step, "split": "train", "lr": float(schedule(step)), **stats})
      print(f"step {step}: loss {stats['loss']:.4f} task {stats['task_loss']:.4f} lm {stats['lm_loss']:.4f} "
            f"({time.time() - started:.1f}s)", flush=True)
    if step % eval_every == 0 or step == total_steps:
      result = evaluate(params)
      log({"step": step, "split": "val", **result})
      improved = (progress["best_metric"] is None
                  or result[metric] > progress["best_metric"] + evaluation.early_stop_min_delta)
      print(f"eval at step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in result.items()) +
            (" (best)" if improved else ""), flush=True)
      if improved:
        progress.update(best_metric=result[metric], best_step=step, best=result, evals_since_best=0)
        export_model(workdir / "best", model_cfg, params, tokenizer, spec,
                     extra={"step": step, "metric": metric, "validation": result})
      else:
        progress["evals_since_best"] += 1
        patience = evaluation.early_stop_patience
        if patience and progress["evals_since_best"] >= patience:
          progress["stopped"] = True
          print(f"early stopping at step {step}: no {metric} improvement in {patience} evaluations",
                flush=True)
      progress["step"] = step
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}),
          progress=ocp.args.JsonSave(progress)))
  manager.wait_until_finished()
  manager.close()
  metrics_file.close()
  summary = {"best_step": progress["best_step"], "best_metric": progress["best_metric"], "metric": metric,
             "best": progress["best"], "steps": step}
  print(f"best {metric} {progress['best_metric']:.4f} at step {progress['best_step']}; model in "
        f"{workdir / 'best'}", flush=True)
  return summary
