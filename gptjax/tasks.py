"""GPT-1 task inputs (Radford et al. 2018, Figure 1): task records -> token sequences.

Structured inputs become token sequences framed by three tokens added to the vocabulary (`<|start|>`,
`<|delimiter|>`, `<|extract|>`):

  classification    start text extract
  entailment        start premise delim hypothesis extract
  similarity        start a delim b extract  AND  start b delim a extract   (two sequences per example)
  multiple_choice   start context delim answer_i extract, for each answer i  (one sequence per answer)

Field text is always encoded as plain text: a literal `<|extract|>` or `<|endoftext|>` inside a review is just
characters, so task tokens come only from the format.

Sequences are RIGHT-padded (with id 0, masked); the extract token of sequence j of example i is at
`lengths[i, j] - 1`. The model derives positions from the attention mask, so padding never shifts them.

Truncation (inputs longer than `max_length`, by default the model's context), as GPT-1: the context is cut, never
the answer. A classification text keeps its beginning (as the original code). A premise or multiple-choice context
keeps its END, the part next to the hypothesis/answer (RACE puts the question there); the hypothesis/answer is never
cut, and an example whose answer alone does not fit is an error that names its line. Similarity has no answer: the
longer text is cut first, each keeping its beginning, and both orders use the same cut texts. With
`truncate=False` every over-long example is an error. The number of truncated examples is logged.

Records come from JSONL / CSV / TSV files with named fields, or TFDS datasets (`tfds:glue/sst2:validation`); each
carries its location (`file:line`) so bad input (a missing field, a label outside the label set, an over-long
answer) is reported where it is.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib
import json
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import numpy as np
from absl import logging

START, DELIMITER, EXTRACT = "<|start|>", "<|delimiter|>", "<|extract|>"
TASK_TOKENS = (START, DELIMITER, EXTRACT)
TASKS = ("classification", "entailment", "similarity", "multiple_choice")
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
      if self.labels and (len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)):
        raise ValueError(f"labels must be at least 2 distinct labels, got {self.labels}")
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
      if names and value == -1:
        continue  # A ClassLabel of -1 means "no label" (e.g. GLUE's test splits): the record is unlabelled.
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
