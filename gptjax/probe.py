"""Probing a model: top-k next tokens and attention maps, for notebooks and the explorer page.

Both work on any `LanguageModel` and run on its inference engine (`lm.engine().forward`); attention maps come from
the model's own attention (the probabilities it sows into the `'intermediates'` collection), not from a
re-implementation.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class NextToken:
  """One candidate next token."""
  token_id: int
  text: str
  probability: float
  logit: float


def _ids(lm, text_or_ids: Union[str, Sequence[int]]) -> np.ndarray:
  if isinstance(text_or_ids, str):
    if lm.tokenizer is None:
      raise ValueError("This model has no tokenizer: pass token ids instead of text")
    ids = lm.tokenizer.encode(text_or_ids)
  else:
    ids = list(text_or_ids)
  if not ids:
    raise ValueError("Empty input: give at least one token (GPT-2 models can start from <|endoftext|>)")
  return np.asarray(ids, np.int64)


def top_next_tokens(lm, text_or_ids: Union[str, Sequence[int]], k: int = 10) -> list[NextToken]:
  """The `k` most likely tokens to follow the input, most likely first (softmax over the full vocabulary)."""
  if not 0 < k <= lm.config.vocab_size:
    raise ValueError(f"k must be in [1, vocab_size={lm.config.vocab_size}], got {k}")
  logits = lm.logits(_ids(lm, text_or_ids))[0, -1]
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits)))
  order = np.argsort(-logits, kind="stable")[:k]
  decode = (lambda i: lm.tokenizer.decode([i])) if lm.tokenizer is not None else str
  return [NextToken(int(i), decode(int(i)), float(probs[i]), float(logits[i])) for i in order]


def attention_maps(lm, text_or_ids: Union[str, Sequence[int]]) -> np.ndarray:
  """Attention probabilities of every layer and head: float32 [num_layers, num_heads, T, T] (rows = queries)."""
  ids = _ids(lm, text_or_ids)
  if len(ids) > lm.config.block_size:
    raise ValueError(f"{len(ids)} tokens exceed the model's context block_size={lm.config.block_size}")
  return lm.engine().forward(ids[None], logits=False, attention=True).attention_NBHTT[:, 0]
