"""What a text source gives `gptjax.data`: documents to iterate, split into train and validation, with an identity.

A leaf: the sources (`gptjax.data`'s own, `gptjax.hf_datasets`, `gptjax.tfds_source`) build these, and
`gptjax.data` tokenises them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator


@dataclasses.dataclass(frozen=True)
class Documents:
  """A re-iterable sequence of documents (str), with its length for progress bars (None: unknown, a stream)."""
  iterate: Callable[[], Iterator[str]]
  count: int | None

  def __iter__(self) -> Iterator[str]:
    return self.iterate()


@dataclasses.dataclass(frozen=True)
class Corpus:
  """The train and validation documents of a source, and a string that identifies them exactly."""
  train: Documents
  val: Documents
  identity: str
