"""Scoring text on the inference engine: log-probabilities of texts, sliding windows over long ones.

`LanguageModel.score` and `gptjax.evaluate` (perplexity, LAMBADA, multiple choice) use these; the method (first
token, windows, strides) is stated in `gptjax/evaluate.py`'s docstring. The forward passes are `Engine.score`, which
computes the log-softmax inside the program, so [B, T, V] logits never reach the host.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class TextScore:
  """What `score_texts` returns per text.

  Attributes:
    logprob: Summed natural-log probability of the scored tokens.
    num_tokens: Tokens scored (every token with `<|endoftext|>` in front; all but the first without).
    num_bytes: UTF-8 bytes of the text.
  """
  logprob: float
  num_tokens: int
  num_bytes: int


@dataclasses.dataclass(frozen=True)
class ScoreRequest:
  """One row for the model: `inputs` [n] predict `targets` [n]; targets before `first_scored` are context."""
  inputs: np.ndarray
  targets: np.ndarray
  first_scored: int


def run_requests(lm, requests: Sequence[ScoreRequest], batch_size: int, progress: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Scores requests in length-sorted batches on the engine. Returns (logprob [R] float64, greedy_match [R] bool).

  Every batch of a call has the same number of rows (the last one is padded) and the engine buckets lengths, so an
  evaluation compiles one program per length bucket.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  engine = lm.engine()
  logprob, greedy = np.zeros(len(requests)), np.zeros(len(requests), bool)
  order = sorted(range(len(requests)), key=lambda i: -len(requests[i].inputs))
  batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
  rows = min(len(requests), batch_size)
  for batch in progress_bar(batches, progress, "batches"):
    length = len(requests[batch[0]].inputs)
    inputs, targets = np.zeros((rows, length), np.int32), np.zeros((rows, length), np.int32)
    valid, scored = np.zeros((rows, length), bool), np.zeros((rows, length), bool)
    for row, index in enumerate(batch):
      request = requests[index]
      n = len(request.inputs)
      inputs[row, :n], targets[row, :n], valid[row, :n] = request.inputs, request.targets, True
      scored[row, request.first_scored:n] = True
    valid[len(batch):] = True  # Padding rows: a full row of token 0, never read.
    score = engine.score(inputs, targets, valid)
    batch_logprob = np.where(scored, score.logprob_BT, 0.0).sum(axis=1, dtype=np.float64)
    batch_greedy = np.all(score.greedy_BT | ~scored, axis=1)
    logprob[batch], greedy[batch] = batch_logprob[:len(batch)], batch_greedy[:len(batch)]
  return logprob, greedy


def progress_bar(items, enabled: bool, unit: str):
  if not enabled:
    return items
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(items, unit=unit, file=sys.stderr)


def sliding_windows(num_targets: int, context: int, stride: int) -> list[tuple[int, int, int]]:
  """The windows over `num_targets` (input -> target) pairs, as `(begin, end, first_scored)`.

  A window feeds inputs [begin, end) and scores targets [first_scored, end): all of them in the first window, and
  in later ones only those no earlier window scored (see the module docstring).
  """
  if not 1 <= stride <= context:
    raise ValueError(f"stride must be in [1, context={context}], got {stride}")
  windows, scored_end = [], 0
  for begin in range(0, num_targets, stride):
    end = min(begin + context, num_targets)
    windows.append((begin, end, scored_end))
    scored_end = end
    if end == num_targets:
      break
  return windows


def check_context(lm, context: Optional[int], stride: Optional[int]) -> tuple[int, int]:
  block_size = lm.config.block_size
  context = block_size if context is None else int(context)
  if not 1 <= context <= block_size:
    raise ValueError(f"context must be in [1, {block_size}] (the model's block_size), got {context}")
  stride = max(1, context // 2) if stride is None else int(stride)
  if not 1 <= stride <= context:
    raise ValueError(f"stride must be in [1, context={context}], got {stride}")
  return context, stride


def text_tokenizer(lm):
  if lm.tokenizer is None:
    raise ValueError("This model has no tokenizer: evaluation needs one to turn text into tokens. Load a folder "
                     "with tokenizer files, or set `lm.tokenizer = gptjax.load_tokenizer(...)` "
                     "(`--tokenizer` on the command line).")
  return lm.tokenizer


def score_prefix(lm) -> list[int]:
  """`[<|endoftext|>]` for GPT-2-style tokenizers; [] for GPT-1 (no such token: the first token is not scored)."""
  eos_id = getattr(text_tokenizer(lm), "eos_id", None)
  return [] if eos_id is None else [eos_id]


def score_texts(lm, texts: Sequence[str], *, context: Optional[int] = None, stride: Optional[int] = None,
                batch_size: int = 8, progress: bool = False) -> list[TextScore]:
  """Log-probability of each text, scored alone (see the module docstring for the first token and windows).

  Args:
    lm: A `gptjax.LanguageModel` with a tokenizer.
    texts: Strings; each is scored independently of the others.
    context: Window length in tokens (default: the model's block_size).
    stride: Step between windows for texts longer than `context` (default: context // 2).
    batch_size: Rows per forward pass.
    progress: Show a progress bar on stderr.

  Returns:
    One `TextScore` per text.
  """
  if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
    raise TypeError("texts must be a list of str")
  context, stride = check_context(lm, context, stride)
  prefix = score_prefix(lm)
  requests, owner = [], []
  num_tokens = []
  for i, ids in enumerate(text_tokenizer(lm).encode_batch(list(texts))):
    stream = np.asarray(prefix + list(ids), np.int64)
    num_targets = max(0, len(stream) - 1)
    num_tokens.append(num_targets)
    for begin, end, first_scored in sliding_windows(num_targets, context, stride):
      requests.append(ScoreRequest(stream[begin:end], stream[begin + 1:end + 1], first_scored - begin))
      owner.append(i)
  logprob, _ = run_requests(lm, requests, batch_size, progress)
  totals = np.zeros(len(texts))
  np.add.at(totals, np.asarray(owner, np.int64), logprob)
  return [TextScore(float(totals[i]), num_tokens[i], len(text.encode("utf-8"))) for i, text in enumerate(texts)]
