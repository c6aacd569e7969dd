"""The `hf:<dataset>[/<config>][:<split>]` data source: Hugging Face `datasets`, streamed where it can be.

Read by `gptjax.data.load_corpus` (the grammar and the validation rule are in its module docstring). Hub datasets
are streamed (`load_dataset(..., streaming=True)`): nothing is downloaded ahead, and the token cache is written in
one pass. A local folder from `save_to_disk` is memory-mapped Arrow and read directly.
"""

from __future__ import annotations

import os
from typing import Any

from gptjax.corpus import Corpus, Documents

TEXT_COLUMN = "text"
UNKNOWN_SIZE_VAL_DOCUMENTS = 1000  # Held out when the split's size is not recorded (a stream has no length).


def parse(spec: str) -> tuple[str, str | None, str | None]:
  """'owner/name/config:split' -> ('owner/name', 'config', 'split'); a local folder has no config.

  Args:
    spec: The source without its `hf:` prefix.

  Returns:
    (dataset path or local folder, config or None, split or None).
  """
  location, _, split = spec.partition(":") if not spec.startswith(("/", ".", "~")) else _split_local(spec)
  if _is_local(location):
    return location, None, split or None
  parts = location.split("/")
  if len(parts) > 3 or not all(parts):
    raise ValueError(f"hf:{spec}: expected hf:<owner>/<name>[/<config>][:<split>] or hf:<folder>[:<split>]")
  name = "/".join(parts[:2])
  return name, (parts[2] if len(parts) == 3 else None), split or None


def _split_local(spec: str) -> tuple[str, str, str]:
  head, sep, tail = spec.rpartition(":")
  if sep and "/" not in tail:
    return head, sep, tail
  return spec, "", ""


def _is_local(location: str) -> bool:
  return os.path.isdir(os.path.expanduser(location))


def corpus(spec: str, val_fraction: float) -> Corpus:
  """The train and validation documents of `hf:<spec>`."""
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(f"The source hf:{spec} needs the `datasets` package: pip install 'gptjax[datasets]'") from None
  path, config, split = parse(spec)
  if _is_local(path):
    loaded = datasets.load_from_disk(os.path.expanduser(path))
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    identity_of = lambda ds: f"fingerprint={ds._fingerprint}"  # pylint: disable=protected-access
  else:
    try:
      names = datasets.get_dataset_split_names(path, config)
    except Exception as e:  # Offline, a typo, or a gated dataset: datasets' own message says which.
      raise RuntimeError(f"Cannot reach Hugging Face dataset {path!r} (config {config!r}): {e}") from e
    splits = {name: _Lazy(path, config, name) for name in names}
    identity_of = lambda ds: f"hub={path}/{config}"
  train_split = split or "train"
  if train_split not in splits:
    raise ValueError(f"hf:{spec}: no split {train_split!r}; the dataset has {sorted(splits)}")
  val_split = None if split else next((s for s in ("validation", "test") if s in splits), None)
  train = splits[train_split]
  if isinstance(train, _Lazy):
    train = train.load()
  column = _text_column(train, spec)
  size = _num_rows(train, train_split)
  if val_split:
    val = splits[val_split]
    val = val.load() if isinstance(val, _Lazy) else val
    train_docs = _documents(train, column, 0, size)
    val_docs = _documents(val, column, 0, _num_rows(val, val_split))
    rule = f"split={val_split}"
  else:
    held_out = max(1, int(size * val_fraction)) if size else UNKNOWN_SIZE_VAL_DOCUMENTS
    if size is not None and held_out >= size:
      raise ValueError(f"hf:{spec} has {size} documents: too few to hold out {held_out} for validation")
    val_docs = _documents(train, column, 0, held_out)
    train_docs = _documents(train, column, held_out, size)
    rule = f"holdout_head={held_out}"
  identity = f"hf:{path}|config={config}|split={train_split}|column={column}|{identity_of(train)}|{rule}"
  return Corpus(train_docs, val_docs, identity)


class _Lazy:
  """A hub split, opened as a stream only when it is read."""

  def __init__(self, path: str, config: str | None, split: str):
    self.path, self.config, self.split = path, config, split

  def load(self):
    import datasets  # pylint: disable=g-import-not-at-top
    return datasets.load_dataset(self.path, self.config, split=self.split, streaming=True)


def _text_column(dataset, spec: str) -> str:
  features = dataset.features or {}
  strings = [name for name, feature in features.items()
             if getattr(feature, "dtype", None) in ("string", "large_string")]
  if TEXT_COLUMN in features:
    return TEXT_COLUMN
  if len(strings) == 1:
    return strings[0]
  raise ValueError(f"hf:{spec}: no {TEXT_COLUMN!r} column and {len(strings)} string columns ({strings}) among "
                   f"{list(features)}: cannot tell which holds the text")


def _num_rows(dataset, split: str) -> int | None:
  if hasattr(dataset, "num_rows") and dataset.num_rows is not None:
    return dataset.num_rows
  info = getattr(dataset, "info", None)
  recorded = getattr(info, "splits", None) or {}
  return recorded[split].num_examples if split in recorded and recorded[split].num_examples else None


def _documents(dataset, column: str, start: int, stop: int | None) -> Documents:
  """Rows [start, stop) of `dataset` as documents (stop None: to the end of a stream); empty texts skipped."""

  def iterate():
    if hasattr(dataset, "num_rows"):  # Arrow on disk: batched column reads, no per-row dicts.
      for lo in range(start, stop, 1024):
        for text in dataset[lo:min(lo + 1024, stop)][column]:
          if text:
            yield text
      return
    rows: Any = dataset.skip(start) if start else dataset
    if stop is not None:
      rows = rows.take(stop - start)
    for row in rows:
      if row[column]:
        yield row[column]

  return Documents(iterate, None if stop is None else stop - start)
