"""The text layer of generation: requests validated and tokenised, stop strings, UTF-8-safe streaming text.

`prepare` (used by `LanguageModel.generate` / `.stream`, which run on `gptjax/inference/engine.py`) validates a
request, tokenises it and turns `<|endoftext|>` and stop sequences into per-row token stops; `TextStream` (used by
them and by the server) detokenises incrementally, never splits a UTF-8 character and holds back text that may begin
a stop string.

Stop sequences: a stop string is matched on the generated text (the output is cut before its first occurrence);
its token encoding is also given to the loop, so that a row usually stops as soon as it is produced. Token-id stop
sequences are matched on ids. Neither the stop sequence nor `<|endoftext|>` is part of the output.

Random keys: `LanguageModel.generate`'s row r (prompt r // num_samples, sample r % num_samples) is the engine's
stream r of the seed, so its samples depend on the seed and the row only, not on the other rows or the buckets.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
from typing import Sequence

import numpy as np

from gptjax.inference import sampling
from gptjax.inference.sampling import SamplingParams


def _byte_decoder() -> dict[str, int]:
  """GPT-2's byte-level alphabet, inverted: the printable character standing for each byte -> the byte."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


@functools.lru_cache(maxsize=8)
def _token_bytes(vocab_size: int, tokenizer) -> tuple[bytes, ...]:
  del vocab_size  # Part of the cache key only: a tokenizer that grows (added tokens) gets a new table.
  inverse = _byte_decoder()
  table = [b""] * tokenizer.vocab_size
  for token, index in tokenizer.backend.get_vocab(with_added_tokens=True).items():
    # Added tokens such as <|endoftext|> are plain text that happens to use only mapped characters.
    table[index] = (bytes(inverse[c] for c in token) if all(c in inverse for c in token) else token.encode())
  return tuple(table)


class TextStream:
  """Incremental detokeniser: push generated ids, get text that is safe to show now.

  Byte-level tokenizers (GPT-2's and `train_bpe`'s) may split one character over several tokens; their bytes go
  through an incremental UTF-8 decoder, so a character is emitted only once all its bytes have arrived, and invalid
  bytes become U+FFFD exactly as `Tokenizer.decode` renders them. Other tokenizers (GPT-1, characters) produce whole
  characters; their text is the growth of `decode(prompt + generated)` past `decode(prompt)`, which also gets GPT-1's
  word spacing right.

  Stop strings: text is held back while it could be the start of one; at the first complete one, the text before it
  is emitted and the stream stops (`stopped`), the stop string itself excluded.
  """

  def __init__(self, tokenizer, prompt_ids: Sequence[int] = (), stop_strings: Sequence[str] = ()):
    self._tokenizer = tokenizer
    self._stops = tuple(stop_strings)
    self._pending = ""
    self.stopped = False
    if tokenizer.kind in ("gpt2", "bpe"):
      self._table = _token_bytes(tokenizer.vocab_size, tokenizer)
      self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    else:
      self._table = None
      self._prompt = list(prompt_ids)
      self._generated: list[int] = []
      self._prompt_text = tokenizer.decode(self._prompt)
      self._given = ""

  def push(self, ids: Sequence[int]) -> str:
    """Adds generated ids; returns the newly complete text (possibly '')."""
    return self._release(self._decode([int(i) for i in ids], final=False), final=False)

  def finish(self) -> str:
    """Ends the stream: returns the rest (an incomplete trailing character becomes U+FFFD)."""
    return self._release(self._decode([], final=True), final=True)

  def _decode(self, ids: list[int], final: bool) -> str:
    if self.stopped:
      return ""
    if self._table is not None:
      return self._utf8.decode(b"".join(self._table[i] for i in ids), final=final)
    self._generated.extend(ids)
    full = self._tokenizer.decode(self._prompt + self._generated)
    text = (full[len(self._prompt_text):] if full.startswith(self._prompt_text)
            else self._tokenizer.decode(self._generated))
    if not text.startswith(self._given):
      return ""  # Decoding changed text already shown: wait until it agrees again.
    new, self._given = text[len(self._given):], text
    return new

  def _release(self, new: str, final: bool) -> str:
    if self.stopped:
      return ""
    self._pending += new
    hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
    if hits:
      out, self._pending, self.stopped = self._pending[:min(hits)], "", True
      return out
    keep = 0
    if not final:
      for k in range(min(len(self._pending), max((len(s) for s in self._stops), default=1) - 1), 0, -1):
        if any(s.startswith(self._pending[-k:]) for s in self._stops):
          keep = k
          break
    out, self._pending = self._pending[:len(self._pending) - keep], self._pending[len(self._pending) - keep:]
    return out


@dataclasses.dataclass
class _Request:
  """A validated request, one entry per row (prompt i, sample j), rows prompt-major."""
  rows: list[list[int]]
  text: bool
  token_stops: list[list[list[int]]]
  string_stops: list[list[str]]
  seed: int
  num_samples: int


def _is_ids(x) -> bool:
  return isinstance(x, (list, tuple, np.ndarray)) and all(
      isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in x)


def prepare(lm, prompts, max_new_tokens, strategy: SamplingParams, seed, stop, num_samples, stop_at_eos,
             truncate_prompt) -> _Request:
  config, tokenizer = lm.config, lm.tokenizer
  strategy.validate(config.vocab_size)
  if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
  if max_new_tokens >= config.block_size:
    raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context "
                     f"block_size={config.block_size}")
  if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
    raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
  if not isinstance(seed, (int, np.integer)):
    raise ValueError(f"seed must be an integer, got {seed!r}")
  eos_id = getattr(tokenizer, "eos_id", None)
  if prompts is None:  # Unconditional, as GPT-2 samples: from <|endoftext|>.
    if eos_id is None:
      raise ValueError("Unconditional generation starts from <|endoftext|>, which this model's tokenizer lacks "
                       f"({'no tokenizer' if tokenizer is None else tokenizer.kind}); give a prompt instead")
    prompts, text = [[eos_id]], tokenizer is not None
  else:
    if isinstance(prompts, (str, bytes)) or _is_ids(prompts) and len(prompts):
      raise TypeError("prompts must be a list of prompts (strings or token-id lists); for one prompt pass "
                      f"[prompt], got {type(prompts).__name__} {str(prompts)[:40]!r}")
    prompts = list(prompts)
    if not prompts:
      raise ValueError("prompts is empty: give at least one prompt (or None for an unconditional sample)")
    text = all(isinstance(p, str) for p in prompts)
    if not text and not all(_is_ids(p) for p in prompts):
      raise TypeError("prompts must be all strings or all token-id lists, got "
                      f"{sorted({type(p).__name__ for p in prompts})}")
    if text and tokenizer is None:
      raise ValueError("Text prompts need a tokenizer, and this model has none: pass token-id lists")
    text_prompts = prompts
    prompts = [tokenizer.encode(p) if text else [int(t) for t in p] for p in prompts]
    for i, p in enumerate(prompts):
      if not p:
        shown = f" ({text_prompts[i]!r})" if text else ""
        raise ValueError(f"Prompt {i}{shown} is empty: every prompt needs at least one token (pass prompts=None "
                         "for unconditional samples, which start from <|endoftext|>)")
      lm.check_token_ids(np.asarray(p))
  room = config.block_size - max_new_tokens
  for i, p in enumerate(prompts):
    if len(p) > room:
      if not truncate_prompt:
        raise ValueError(
            f"Prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} that is "
            f"{len(p) + max_new_tokens} > the model's context block_size={config.block_size}. Shorten the "
            f"prompt, lower max_new_tokens, or pass truncate_prompt=True to keep its last {room} tokens")
      prompts[i] = p[-room:]
  per_prompt = _stops_per_prompt(stop, len(prompts), text, tokenizer)
  eos_stop = [[eos_id]] if stop_at_eos and eos_id is not None else []
  rows = [p for p in prompts for _ in range(num_samples)]
  token_stops = [eos_stop + per_prompt[i][0] for i in range(len(prompts)) for _ in range(num_samples)]
  string_stops = [per_prompt[i][1] for i in range(len(prompts)) for _ in range(num_samples)]
  return _Request(rows=rows, text=text, token_stops=token_stops, string_stops=string_stops, seed=int(seed),
                  num_samples=int(num_samples))


def _stops_per_prompt(stop, num_prompts: int, text: bool, tokenizer) -> list[tuple[list[list[int]], list[str]]]:
  """Normalises `stop` to, per prompt, (token-id sequences, stop strings)."""

  def one_set(items, where: str):
    if items is None:
      return [], []
    if isinstance(items, str) or _is_ids(items) and len(items):
      items = [items]
    strings, sequences = [], []
    for item in items:
      if isinstance(item, str):
        if not item:
          raise ValueError(f"{where}: a stop string is empty")
        if not text:
          raise ValueError(f"{where}: stop string {item!r} needs text prompts; with token-id prompts give stop "
                           "sequences as token-id lists")
        strings.append(item)
        sequences.append(tokenizer.encode(item))
      elif _is_ids(item) and len(item):
        if len(item) > sampling.MAX_STOP_LENGTH:
          raise ValueError(f"{where}: a token-id stop sequence may hold at most {sampling.MAX_STOP_LENGTH} ids, got "
                           f"{len(item)}")
        sequences.append([int(t) for t in item])
      else:
        raise ValueError(f"{where}: a stop must be a non-empty string or token-id list, got {item!r} (per-prompt "
                         f"stops need one list or None per prompt: {num_prompts} here)")
    return sequences, strings

  if (isinstance(stop, (list, tuple)) and len(stop) == num_prompts and stop
      and all(x is None or isinstance(x, (list, tuple)) and not _is_ids(x) for x in stop)):
    return [one_set(x, f"stop[{i}]") for i, x in enumerate(stop)]  # One set per prompt.
  shared = one_set(stop, "stop")
  return [shared] * num_prompts


def strip_token_stop(ids: list[int], stops: Sequence[Sequence[int]]) -> list[int]:
  """`ids` without the stop sequence it ends with (the longest, which began first, when several match)."""
  for seq in sorted(stops, key=len, reverse=True):
    if seq and len(ids) >= len(seq) and ids[len(ids) - len(seq):] == list(seq):
      return ids[:len(ids) - len(seq)]
  return ids


