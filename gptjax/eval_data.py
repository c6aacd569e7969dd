"""Reading evaluation data: local text files, JSONL, prepared TFDS datasets, the trainer's own splits.

Sources (the `--data` of `python -m gptjax.evaluate`):
  `text:<glob>`      UTF-8 files in sorted path order (`**` recurses). Perplexity reads them as consecutive pieces
                     of one text by default; LAMBADA reads one passage per non-blank line.
  `jsonl:<path>`     One JSON object per line (a path ending in `.jsonl` needs no prefix). Perplexity and LAMBADA
                     read the field `text`; multiple choice reads `context`, `endings` and `label`; generation
                     reads `source` and `target` (or `targets`, a list of references).
  `tfds:<name>[:<field>]`  A TFDS dataset prepared as array_record, read without TensorFlow; `split` picks the
                     split (default 'test'). HellaSwag and Story Cloze have `context`/`endings`/`label` already.
  `builtin:python`   The trainer's default corpus (perplexity; its 'val' split unless told otherwise).
With split 'train' or 'val', any `gptjax.data` source is read through `gptjax.data.load_corpus`: the very documents
the trainer trains or validates on.

Every item keeps a name (`file.jsonl line 7`, `tfds:hellaswag[validation] example 3`) for error messages.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import pathlib
from typing import Any, Optional, Union

import numpy as np

from gptjax import tfds_source

TASKS = ("perplexity", "lambada", "multiple_choice", "generation")
TRAINING_SPLITS = ("train", "val")  # Split by gptjax.data.load_corpus, as the trainer does.




@dataclasses.dataclass(frozen=True)
class Records:
  """Items read from a source, with a name for each (`file.jsonl line 7`) for error messages."""
  items: list
  where: list[str]


def read_text_files(pattern: str) -> Records:
  """Each file matching `pattern` (sorted paths; `**` recurses) as one UTF-8 string."""
  paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
  if not paths:
    raise FileNotFoundError(f"No files match {pattern!r}")
  items = []
  for path in paths:
    data = pathlib.Path(path).read_bytes()
    try:
      items.append(data.decode("utf-8"))
    except UnicodeDecodeError as e:
      raise ValueError(f"{path} is not UTF-8 (byte {e.start}: {data[e.start:e.start + 4]!r}); convert it, e.g. "
                       f"`iconv -f cp1252 -t utf-8`") from None
  return Records(items, paths)


def read_jsonl(path: Union[str, os.PathLike]) -> Records:
  """One JSON value per non-blank line; errors name the line."""
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"No such JSONL file: {path}")
  items, where = [], []
  with path.open(encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        items.append(json.loads(line.rstrip("\r\n")))  # Without the newline, so the column is on this line.
      except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {number}: not valid JSON ({e.msg} at column {e.colno})") from None
      where.append(f"{path} line {number}")
  return Records(items, where)


def read_tfds(spec: str, split: str, data_dir: Optional[str] = None) -> Records:
  """Examples of a prepared TFDS dataset (array_record, read without TensorFlow), as dicts of Python values."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import; only this source)
  name, _ = tfds_source.parse_spec(spec)
  root = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"TFDS has no dataset {name!r}") from None
  if not builder.is_prepared():
    raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared in {root}: run `tfds build {name} "
                            f"--data_dir {root} --file_format=array_record` (on a machine online) first")
  if split not in builder.info.splits:
    raise ValueError(f"TFDS dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}")
  source = builder.as_data_source(split=split)
  items = [_python_values(source[i]) for i in range(len(source))]
  return Records(items, [f"tfds:{name}[{split}] example {i}" for i in range(len(items))])


def _python_values(value):
  if isinstance(value, dict):
    return {k: _python_values(v) for k, v in value.items()}
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode("utf-8")
  if isinstance(value, np.ndarray):
    return [_python_values(v) for v in value.tolist()] if value.ndim else _python_values(value.item())
  if isinstance(value, (list, tuple)):
    return [_python_values(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def load_task_data(task: str, source: str, *, split: Optional[str] = None, tfds_data_dir: Optional[str] = None,
                   field: Optional[str] = None, val_fraction: Optional[float] = None,
                   builtin_max_bytes: Optional[int] = None) -> Records:
  """Reads what `task` needs from `source`.

  Args:
    task: One of `TASKS`.
    source: `text:<glob>` (perplexity: each file a piece of the text; lambada: one passage per non-blank line),
      `jsonl:<path>` or a path ending in `.jsonl` (perplexity and lambada read field `text`; multiple_choice reads
      `context`, `endings`, `label`), `tfds:<name>[:<field>]` (a text `field` for perplexity and lambada, found by
      itself when the dataset has one string feature), or `builtin:python` (perplexity).
    split: 'train' or 'val': the documents the trainer trains or validates on, split by `gptjax.data.load_corpus`
      (perplexity only; `builtin:python` defaults to 'val'). Any other name is a TFDS split (default 'test').
      Unset for `text:`: every file, whole.
    tfds_data_dir: TFDS data_dir.
    field: The text field for perplexity and lambada (default: `text` in JSONL; the only string in TFDS).
    val_fraction: With split 'train'/'val': the held-out fraction, as the trainer's data config has it.
    builtin_max_bytes: With `builtin:python`: the size cap, as the trainer's data config has it.

  Returns:
    `Records` of str (perplexity, lambada) or dicts (multiple_choice, generation).
  """
  if task not in TASKS:
    raise ValueError(f"Unknown task {task!r}; expected one of {TASKS}")
  kind, _, arg = source.partition(":")
  is_jsonl = kind == "jsonl" or (kind not in ("text", "tfds", "builtin") and source.endswith(".jsonl"))
  if split is not None and split not in TRAINING_SPLITS and kind != "tfds":
    raise ValueError(f"split {split!r} names a TFDS split, but {source!r} is not a TFDS source (its splits: "
                     f"{TRAINING_SPLITS} for text: and builtin: sources, none for JSONL)")
  if is_jsonl and split is not None:
    raise ValueError(f"JSONL {source!r} has no splits; got split {split!r}")
  if source == "builtin:python" or split in TRAINING_SPLITS:
    if task != "perplexity":
      raise ValueError(f"{task} cannot read {source!r} with split {split!r}: the trainer's train/val documents "
                       f"are for perplexity")
    records = _training_split(source, split or "val", tfds_data_dir, field, val_fraction, builtin_max_bytes)
  elif kind == "text" and arg:
    records = read_text_files(arg)
    if task == "lambada":
      lines = [(line, f"{w} line {n}") for text, w in zip(records.items, records.where)
               for n, line in enumerate(text.splitlines(), 1) if line.strip()]
      records = Records([l for l, _ in lines], [w for _, w in lines])
    elif task == "multiple_choice":
      raise ValueError("multiple_choice reads JSONL (context, endings, label) or TFDS, not text files")
    elif task == "generation":
      raise ValueError("generation reads JSONL (source, and target or targets) or TFDS, not text files")
  elif is_jsonl:
    records = read_jsonl(arg if kind == "jsonl" else source)
  elif kind == "tfds" and arg:
    records = read_tfds(arg, split or "test", tfds_data_dir)
  else:
    raise ValueError(f"Unknown data source {source!r}: expected 'text:<glob>', 'jsonl:<path>' (or a .jsonl path), "
                     f"'tfds:<name>[:<field>]' or 'builtin:python'")
  if not records.items:
    raise ValueError(f"Nothing to evaluate: {source!r} has no examples")
  if task == "multiple_choice":
    for item, where in zip(records.items, records.where):
      check_choice_example(item, where)
  elif task == "generation":
    for item, where in zip(records.items, records.where):
      check_generation_example(item, where)
  elif not isinstance(records.items[0], str):
    records = _text_field(records, field or _default_field(source, records.items[0]))
  return records


def _training_split(source: str, split: str, tfds_data_dir: Optional[str], field: Optional[str],
                    val_fraction: Optional[float], builtin_max_bytes: Optional[int] = None) -> Records:
  """The trainer's own train or val documents (`gptjax.data.load_corpus`), so eval numbers match its split."""
  from gptjax import data  # pylint: disable=g-import-not-at-top
  if split not in TRAINING_SPLITS:
    raise ValueError(f"{source!r} has only the trainer's splits {TRAINING_SPLITS}, got split {split!r}")
  if field and source.startswith("tfds:") and not tfds_source.parse_spec(source[5:])[1]:
    source = f"{source}:{field}"
  options = {} if val_fraction is None else {"val_fraction": val_fraction}
  if builtin_max_bytes:
    options["builtin_max_bytes"] = builtin_max_bytes
  corpus = data.load_corpus(source, tfds_data_dir=tfds_data_dir, download=False, **options)
  documents = list(corpus.train if split == "train" else corpus.val)
  return Records(documents, [f"{source}[{split}] document {i}" for i in range(len(documents))])


def _default_field(source: str, first: Any) -> str:
  if isinstance(first, dict) and not source.startswith("tfds:"):
    return "text"
  named = tfds_source.parse_spec(source[5:])[1] if source.startswith("tfds:") else None
  if named:
    return named
  strings = [k for k, v in first.items() if isinstance(v, str)] if isinstance(first, dict) else []
  if len(strings) != 1:
    raise ValueError(f"{source!r} has {len(strings)} string fields {strings}: name one as tfds:<name>:<field>")
  return strings[0]


def _text_field(records: Records, field: str) -> Records:
  texts = []
  for item, where in zip(records.items, records.where):
    if not isinstance(item, dict) or field not in item:
      fields = sorted(item) if isinstance(item, dict) else type(item).__name__
      raise ValueError(f"{where}: missing field {field!r} (has {fields})")
    if not isinstance(item[field], str):
      raise ValueError(f"{where}: field {field!r} must be a string, got {type(item[field]).__name__}")
    texts.append(item[field])
  return Records(texts, records.where)


def check_choice_example(example: Any, where: str) -> None:
  """Raises ValueError naming `where` unless `example` has a str context, str endings and an in-range label."""
  if not isinstance(example, dict):
    raise ValueError(f"{where}: expected an object with context, endings and label, got {type(example).__name__}")
  missing = [k for k in ("context", "endings", "label") if k not in example]
  if missing:
    raise ValueError(f"{where}: missing field {', '.join(map(repr, missing))} (has {sorted(example)})")
  if not isinstance(example["context"], str):
    raise ValueError(f"{where}: 'context' must be a string, got {type(example['context']).__name__}")
  endings = example["endings"]
  if not isinstance(endings, list) or not endings or not all(isinstance(e, str) for e in endings):
    raise ValueError(f"{where}: 'endings' must be a non-empty list of strings, got {endings!r:.80}")
  label = example["label"]
  if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
    raise ValueError(f"{where}: 'label' must be an integer index into 'endings', got {label!r}")
  if not 0 <= label < len(endings):
    raise ValueError(f"{where}: label {label} is out of range for {len(endings)} endings "
                     f"(expected 0..{len(endings) - 1})")


def check_generation_example(example: Any, where: str) -> None:
  """Raises ValueError naming `where` unless `example` has a str `source` and a str `target` or a non-empty list of
  str `targets` (several references)."""
  if not isinstance(example, dict):
    raise ValueError(f"{where}: expected an object with source and target, got {type(example).__name__}")
  if not isinstance(example.get("source"), str):
    raise ValueError(f"{where}: 'source' must be a string, got {example.get('source')!r:.80} (has {sorted(example)})")
  if "targets" in example:
    targets = example["targets"]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
      raise ValueError(f"{where}: 'targets' must be a non-empty list of strings, got {targets!r:.80}")
  elif not isinstance(example.get("target"), str):
    raise ValueError(f"{where}: needs 'target' (a string) or 'targets' (a list of strings), got "
                     f"{example.get('target')!r:.80} (has {sorted(example)})")


def references(example: dict) -> list[str]:
  """An example's references: `targets`, or [`target`]."""
  return list(example["targets"]) if "targets" in example else [example["target"]]
