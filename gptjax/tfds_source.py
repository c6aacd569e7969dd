"""The `tfds:<name>[/<config>][:<version>][:<feature>]` source of `gptjax.data`: a TFDS dataset read with random
access from array_record files (no TensorFlow), its text feature found by itself when there is exactly one.

Validation is the dataset's `validation` (else `test`) split, otherwise the last `val_fraction` of the train
examples. Errors name the dataset and say how to prepare it (`tfds build ... --file_format=array_record`).
"""

from __future__ import annotations

import os

import numpy as np

from gptjax.corpus import Corpus, Documents


def corpus(spec: str, val_fraction: float, data_dir: str | None, download: bool) -> Corpus:
  """The train and validation documents of `tfds:<spec>` (see `gptjax.data` for the rules)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow to import; only this source needs it)

  name, feature = parse_spec(spec)
  root = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"TFDS has no dataset {name!r}, neither registered nor prepared in data_dir {root}. See "
                     f"`tfds.list_builders()`, or check the name.") from None
  build_cmd = f"tfds build {name} --data_dir {root} --file_format=array_record"
  if not builder.is_prepared():
    if not download:
      raise FileNotFoundError(
          f"TFDS dataset {name!r} is not prepared in data_dir {root} (looked in {builder.data_dir}). Run "
          f"`{build_cmd}` where it can be downloaded (copy the folder here if this machine is offline), or let "
          f"the first run download and prepare it (download=True).")
    try:
      builder.download_and_prepare()
    except Exception as e:
      raise RuntimeError(f"Could not download and prepare TFDS dataset {name!r} into {root}: {e}. If this "
                         f"machine is offline, run `{build_cmd}` elsewhere and copy the folder.") from e
  features = builder.info.features
  texts = [k for k, v in features.items() if isinstance(v, tfds.features.Text)]
  if feature is None:
    if len(texts) != 1:
      raise ValueError(f"TFDS dataset {name!r} has {len(texts)} text features ({texts}) among "
                       f"{list(features)}: name one as tfds:{name}:<feature>.")
    (feature,) = texts
  elif feature not in features:
    raise ValueError(f"TFDS dataset {name!r} has no feature {feature!r}; it has {list(features)}.")
  val_split = next((s for s in ("validation", "test") if s in builder.info.splits), None)
  try:
    train = builder.as_data_source(split="train")
    val = builder.as_data_source(split=val_split) if val_split else train
  except Exception as e:  # e.g. prepared as tfrecord, which has no random access.
    raise RuntimeError(f"Cannot read TFDS dataset {name!r} from {builder.data_dir} with random access: {e}. "
                       f"Re-prepare it as array_record: `{build_cmd}`.") from e
  n = len(train)
  cut = n if val_split else n - max(1, int(n * val_fraction))
  train_range, val_range = range(cut), range(len(val)) if val_split else range(cut, n)
  if not train_range or not val_range:
    raise ValueError(f"TFDS dataset {name!r} has {n} train examples: too few to train and validate on.")
  rule = f"split={val_split}" if val_split else f"holdout_examples={val_fraction!r}"
  identity = f"tfds:{builder.info.full_name}:{feature}|train={n}|val={len(val_range)}|{rule}"
  return Corpus(_documents(train, train_range, feature, name),
                _documents(val, val_range, feature, name), identity)


def parse_spec(spec: str) -> tuple[str, str | None]:
  """'name/config:1.0.0:text' -> ('name/config:1.0.0', 'text'); a trailing version is not a feature."""
  head, _, tail = spec.rpartition(":")
  if not head or tail.replace(".", "").isdigit() or "*" in tail:
    return spec, None
  return head, tail


def _documents(source, indices: range, feature: str, name: str) -> Documents:
  def iterate():
    for lo in range(indices.start, indices.stop, 512):  # Batched reads: one array_record call per chunk.
      for i, example in enumerate(_read_examples(source, list(range(lo, min(lo + 512, indices.stop))))):
        text = example[feature]
        try:
          text = bytes(text).decode("utf-8") if isinstance(text, (bytes, np.bytes_)) else str(text)
        except UnicodeDecodeError as e:
          raise ValueError(f"TFDS dataset {name!r}, example {lo + i}: {feature!r} is not UTF-8: {e}") from None
        if text:  # As for files: an empty document would give two eos in a row.
          yield text
  return Documents(iterate, len(indices))  # The count may include empty examples: it only feeds tqdm.


def _read_examples(source, keys: list[int]) -> list:
  try:
    return source.__getitems__(keys)  # Twice as fast as one read per example.
  except TypeError:
    # tfds.testing.mock_data binds __getitems__ wrongly in tfds 4.9.x, while [] works.
    return [source[k] for k in keys]
