r"""Conditional generation, source -> target: the template an example is laid out with, its tokens with the loss on
the target only, and the predictions of a model fine-tuned that way.

A template is a string with one `{source}` and, after it, one `{target}`; `<|name|>` markers in it are single
special tokens, and everything else is literal text. Examples:

  "{source}<|delimiter|>{target}<|endoftext|>"   the default: GPT-1's delimiter between the two, GPT-2's end
  "{source}\nTL;DR: {target}<|endoftext|>"       GPT-2's summarisation prompt (Radford et al. 2019, section 3.6)
  "Code:\n{source}\nSummary: {target}\n"         plain text only: the end marker is a line break

Markers the tokenizer lacks (`<|delimiter|>` for GPT-2, also `<|endoftext|>` for GPT-1) are added to it when
fine-tuning starts, and the embedding grows to match, as for GPT-1's task tokens (`gptjax/tasks.py`). The text
after `{target}` (the end marker) must not be empty: it is what the model learns to write when a target is done,
and where prediction stops.

One example is the token sequence prefix (the template up to `{target}`, with the source) + target + end marker.
Training is next-token cross-entropy on the target's tokens and the end marker only (`target_mask`): the source
and the template's own tokens are context, and get no loss and so no gradient. Field text is encoded as plain text
(a literal `<|endoftext|>` inside a source is just characters). An example longer than `max_length` (0: the
model's context) loses the END of its source (a document's lead, a function's signature, stay); the target is
never cut, and one that does not fit beside a one-token source is an error naming its line.

A template used to prompt a model that was not fine-tuned with it (zero-shot) works best when the text before
`{target}` does not end in a space: byte-level BPEs attach a space to the word after it, so such a prompt ends in a
lone space token, which pre-training text rarely has (GPT-2's paper prompts with "TL;DR:" and the model writes
" ..."). Fine-tuning encodes training and prediction alike, so there it does not matter.

Prediction (`LanguageModel.predict`, `python -m gptjax.predict`, `gptjax.evaluate --task generation`) feeds the
prefix and generates until the end marker, greedy unless told otherwise; `lm.generate`'s beam options pass through.
The source is cut the same way when the prefix and `max_new_tokens` do not fit in the context.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

TASK = "generation"
DEFAULT_TEMPLATE = "{source}<|delimiter|>{target}<|endoftext|>"
TLDR_TEMPLATE = "{source}\nTL;DR: {target}<|endoftext|>"
_PIECES = re.compile(r"(\{source\}|\{target\}|<\|[^|<>{}\s]+\|>)")


def parse_template(template: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
  """(prefix, end): the template's pieces before and after `{target}`, each ('text' | 'special' | 'source', value).

  Raises:
    ValueError: naming the template, unless it has one `{source}`, then one `{target}`, then a non-empty end.
  """
  if not isinstance(template, str):
    raise ValueError(f"template must be a string with {{source}} and {{target}}, got {template!r}")
  pieces = []
  for part in _PIECES.split(template):
    if part == "{source}":
      pieces.append(("source", part))
    elif part == "{target}":
      pieces.append(("target", part))
    elif _PIECES.fullmatch(part):
      pieces.append(("special", part))
    elif part:
      pieces.append(("text", part))
  kinds = [k for k, _ in pieces]
  if kinds.count("source") != 1 or kinds.count("target") != 1 or kinds.index("source") > kinds.index("target"):
    raise ValueError(f"template {template!r} must contain {{source}} once and, after it, {{target}} once")
  split = kinds.index("target")
  prefix, end = pieces[:split], pieces[split + 1:]
  if not end:
    raise ValueError(f"template {template!r} has nothing after {{target}}: end it with a marker such as "
                     "<|endoftext|>, which the model learns to write when a target is done")
  return prefix, end


@dataclasses.dataclass(frozen=True)
class GenerationSpec:
  """A conditional-generation task; saved in `finetune.json` beside a fine-tuned model.

  Attributes:
    template: The layout (module docstring).
    source_field: The records' source field.
    target_field: The records' target field.
    max_length: Longest training sequence in tokens; 0 = the model's context.
    truncate: Cut an over-long source (its end); False makes it an error.
    max_new_tokens: Prediction's default limit on a target's tokens (at most half the model's context).
  """
  template: str = DEFAULT_TEMPLATE
  source_field: str = "source"
  target_field: str = "target"
  max_length: int = 0
  truncate: bool = True
  max_new_tokens: int = 64
  task: str = TASK

  def __post_init__(self):
    parse_template(self.template)
    if self.task != TASK:
      raise ValueError(f"GenerationSpec is for task {TASK!r}, got {self.task!r}")
    if self.max_length < 0:
      raise ValueError(f"max_length must be >= 0 (0 = the model's context), got {self.max_length}")
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

  kind = TASK  # How `LanguageModel.predict` tells it from the classification heads.

  @property
  def special_tokens(self) -> list[str]:
    """The template's `<|name|>` markers, in order of first use."""
    prefix, end = parse_template(self.template)
    return list(dict.fromkeys(v for k, v in prefix + end if k == "special"))

  @classmethod
  def from_config(cls, config) -> "GenerationSpec":
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{n: config[n] for n in names if n in config and config[n] is not None})

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "GenerationSpec":
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


def add_template_tokens(tokenizer, spec: GenerationSpec) -> dict[str, int]:
  """Adds the template's markers the tokenizer lacks (a no-op for those it has); returns every marker's id."""
  missing = [t for t in spec.special_tokens if tokenizer.token_to_id(t) is None]
  if missing:
    tokenizer.add_special_tokens(missing)
  return {t: tokenizer.token_to_id(t) for t in spec.special_tokens}


def template_ids(tokenizer, spec: GenerationSpec) -> dict[str, int]:
  """The markers' ids in a tokenizer that must already have them (prediction)."""
  ids = {t: tokenizer.token_to_id(t) for t in spec.special_tokens}
  missing = [t for t, i in ids.items() if i is None]
  if missing:
    raise ValueError(f"template {spec.template!r} needs the tokens {missing}, which this model's tokenizer lacks: "
                     "fine-tuning with the template adds them; for a model not fine-tuned with it, use a template "
                     "of plain text (e.g. GPT-2's '{source}\\nTL;DR: {target}<|endoftext|>')")
  return ids


# ----------------------------------------------------------------------------------------------------------------
# Records -> tokens.


@dataclasses.dataclass
class GenerationData:
  """Encoded examples, right-padded with id 0.

  Attributes:
    tokens: int32 [E, L]: prefix + target + end marker.
    prefix_lengths: int32 [E]: tokens before the target (the first token with a loss is at this index).
    lengths: int32 [E]: real tokens.
    num_truncated: examples whose source was cut.
  """
  tokens: np.ndarray
  prefix_lengths: np.ndarray
  lengths: np.ndarray
  num_truncated: int = 0

  def __len__(self) -> int:
    return self.tokens.shape[0]

  def padded_to(self, length: int) -> "GenerationData":
    return dataclasses.replace(self, tokens=np.pad(self.tokens, ((0, 0), (0, length - self.tokens.shape[1]))))


class _Layout:
  """A template's pieces as token ids for one tokenizer: fields in, (prefix, end) id lists out."""

  def __init__(self, tokenizer, spec: GenerationSpec, ids: dict[str, int]):
    from gptjax.tasks import _plain_text  # pylint: disable=g-import-not-at-top,protected-access
    self.tokenizer, self.spec, self._plain_text = tokenizer, spec, _plain_text
    prefix, end = parse_template(spec.template)
    encode = lambda k, v: [ids[v]] if k == "special" else tokenizer.encode(v) if k == "text" else None
    self.prefix = [encode(k, v) for k, v in prefix]  # None where the source goes.
    self.end = [t for k, v in end for t in encode(k, v)]
    self.fixed = sum(len(p) for p in self.prefix if p is not None)
    self.end_text = "".join(v for k, v in end if k == "text") if all(k == "text" for k, _ in end) else None

  def encode_fields(self, texts: Sequence[str]) -> list[list[int]]:
    with self._plain_text(self.tokenizer):
      return self.tokenizer.encode_batch(list(texts))

  def prefix_ids(self, source: list[int], room: int, where: str) -> tuple[list[int], bool]:
    """The prefix with `source` cut (at its end) to fit `room` tokens; (ids, cut)."""
    keep = room - self.fixed
    cut = len(source) > keep
    if cut:
      if keep < 1:
        raise ValueError(f"{where}: no room for the source: {room} tokens are left beside the target (or the new "
                         f"tokens), and the template takes {self.fixed} of them")
      if not self.spec.truncate:
        raise ValueError(f"{where}: the source's {len(source)} tokens do not fit in the {keep} left for it, and "
                         "truncate=False")
    return [t for p in self.prefix for t in (source[:keep] if p is None else p)], cut


def _text_field(record: dict, name: str, where: str) -> str:
  if name not in record or record[name] is None:
    raise ValueError(f"{where}: missing field {name!r}; the record has fields {sorted(record)}")
  if not isinstance(record[name], str):
    raise ValueError(f"{where}: field {name!r} must be text, got {type(record[name]).__name__}")
  return record[name]


def encode_examples(spec: GenerationSpec, tokenizer, ids: dict[str, int], records: Sequence[tuple[str, dict]],
                    max_length: int) -> GenerationData:
  """Training examples: (location, record) pairs -> right-padded tokens with each prefix length.

  Raises:
    ValueError: a missing or non-text field, or a target that does not fit `max_length`, naming the record.
  """
  if not records:
    raise ValueError("No examples to encode")
  layout = _Layout(tokenizer, spec, ids)
  sources = layout.encode_fields([_text_field(r, spec.source_field, w) for w, r in records])
  targets = layout.encode_fields([_text_field(r, spec.target_field, w) for w, r in records])
  rows, prefix_lengths, truncated = [], [], 0
  for (where, _), source, target in zip(records, sources, targets):
    answer = target + layout.end
    if not target:
      raise ValueError(f"{where}: the target {spec.target_field!r} is empty")
    prefix, cut = layout.prefix_ids(source, max_length - len(answer), where)
    truncated += cut
    rows.append(prefix + answer)
    prefix_lengths.append(len(prefix))
  tokens = np.zeros((len(rows), max(map(len, rows))), np.int32)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
  if truncated:
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.warning("%d of %d examples were longer than max_length=%d: their sources' ends were cut.", truncated,
                    len(records), max_length)
  return GenerationData(tokens, np.asarray(prefix_lengths, np.int32), np.asarray(list(map(len, rows)), np.int32),
                        truncated)


# ----------------------------------------------------------------------------------------------------------------
# The loss: next-token cross-entropy on the target and end marker only.


def target_mask(prefix_lengths_B, lengths_B, length: int):
  """bool [B, length - 1]: position t's prediction (of token t + 1) is scored iff token t + 1 is a target or end
  token, i.e. prefix_length <= t + 1 < length."""
  next_L = jnp.arange(1, length)[None, :]
  return (next_L >= prefix_lengths_B[:, None]) & (next_L < lengths_B[:, None])


def target_nll_sum(logits_BLV, tokens_BL, prefix_lengths_B, lengths_B, weight_B=None):
  """(summed cross-entropy of the target tokens, their number), float32: `target_mask` weights the positions."""
  mask_BL = target_mask(prefix_lengths_B, lengths_B, tokens_BL.shape[1]).astype(jnp.float32)
  if weight_B is not None:
    mask_BL = mask_BL * weight_B[:, None]
  nll_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV[:, :-1].astype(jnp.float32), tokens_BL[:, 1:])
  return (nll_BL * mask_BL).sum(), mask_BL.sum()


def loss_sums(model_config, params, batch, *, deterministic: bool = True, rng=None) -> dict[str, jax.Array]:
  """The GPT on a batch {'tokens' [B, L], 'prefix_lengths' [B], 'lengths' [B], optional 'weight' [B]}:
  {'loss_sum', 'tokens'} over the target tokens."""
  from gptjax.model import GPT  # pylint: disable=g-import-not-at-top
  tokens_BL = batch["tokens"]
  mask_BL = jnp.arange(tokens_BL.shape[1])[None, :] < batch["lengths"][:, None]
  logits_BLV = GPT(model_config).apply({"params": params}, tokens_BL, attention_mask_BL=mask_BL,
                                       deterministic=deterministic, rngs=None if deterministic else {"dropout": rng})
  total, count = target_nll_sum(logits_BLV, tokens_BL, batch["prefix_lengths"], batch["lengths"], batch.get("weight"))
  return {"loss_sum": total, "tokens": count}


# ----------------------------------------------------------------------------------------------------------------
# A fine-tuned model's task, saved beside it, and its predictions.


@dataclasses.dataclass
class GenerationHead:
  """What `LanguageModel.head` holds for a generation model: the task only (the weights are the whole model)."""
  spec: GenerationSpec
  params: Optional[dict] = None

  def save(self, directory: os.PathLike, extra: Optional[dict] = None) -> None:
    from gptjax.heads import SPEC_FILE  # pylint: disable=g-import-not-at-top
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    info = {"spec": self.spec.to_dict(), "task_tokens": self.spec.special_tokens, **(extra or {})}
    (directory / SPEC_FILE).write_text(json.dumps(info, indent=2) + "\n")


def default_max_new_tokens(lm, spec: GenerationSpec) -> int:
  """The spec's limit on a target's tokens, but at most half the context: the other half is the source's."""
  return min(spec.max_new_tokens, lm.config.block_size // 2)


def generate_targets(lm, spec: GenerationSpec, sources: Sequence[str], *, max_new_tokens: Optional[int] = None,
                     batch_size: int = 16, progress=lambda batches: batches, **options) -> list[str]:
  """Targets for `sources` laid out with `spec.template`: greedy unless `options` (lm.generate's) say otherwise.

  `max_new_tokens` defaults to `spec.max_new_tokens`, at most half the model's context; sources too long to fit
  beside it lose their end, as in training.

  Returns one string per source, source-major (`num_return_sequences=k`: k per source, best first).
  """
  if lm.tokenizer is None:
    raise ValueError("generation needs the model's tokenizer, and this model has none")
  if isinstance(sources, str) or not all(isinstance(s, str) for s in sources):
    raise ValueError("sources must be a list of strings")
  layout = _Layout(lm.tokenizer, spec, template_ids(lm.tokenizer, spec))
  n = default_max_new_tokens(lm, spec) if max_new_tokens is None else max_new_tokens
  if not isinstance(n, int) or not 1 <= n < lm.config.block_size - layout.fixed:
    raise ValueError(f"max_new_tokens must be in [1, {lm.config.block_size - layout.fixed}) (the context less the "
                     f"template's {layout.fixed} tokens and a source token), got {n!r}")
  prompts = [layout.prefix_ids(source, lm.config.block_size - n, f"source {i}")[0]
             for i, source in enumerate(layout.encode_fields(sources))]
  if options.get("num_beams", 1) == 1:
    options = {"temperature": 0.0, **options}  # Greedy unless asked otherwise (beam search is deterministic).
  outputs = []
  for lo in progress(range(0, len(prompts), batch_size)):
    outputs += lm.generate(prompts[lo:lo + batch_size], n, stop=[layout.end], **options)
  texts = [lm.tokenizer.decode(ids) for ids in outputs]
  if layout.end_text:  # A text end marker may come out merged with what follows it (`\n\n` for `\n`).
    texts = [t.split(layout.end_text, 1)[0] for t in texts]
  return texts


def predict(lm, inputs, **options):
  """`LanguageModel.predict` of a generation model: the target of one source, or of each of a list."""
  single = isinstance(inputs, str)
  result = generate_targets(lm, lm.head.spec, [inputs] if single else list(inputs), **options)
  return result[0] if single and len(result) == 1 else result
