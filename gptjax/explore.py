"""What a model makes of a text: next tokens, token ranks, attention, logit lens and ablations.

The library behind the explorer page (`POST /v1/explore`, gptjax/serve/explorer.py) and `notebooks/explore.ipynb`.
`explore(model, text=...)` runs the model once through the engine's `forward` (twice with ablations) and returns a
JSON-ready dict; `ExploreRequest` validates a request and names the offending field, which the server turns into a
400. The reply's schema is documented in the README's "Explorer" section.

Conventions:
- Position t's distribution is over the token that follows token t: `positions[t]` predicts `tokens[t + 1]`, and
  `tokens[t]["rank"]` / `["prob"]` (GLTR) are read from position t - 1. The first token has no prediction (null).
- Ranks count from 1: rank r means r - 1 tokens had a strictly larger logit.
- Token texts are shown readably (`display`): a space is `·`, a newline `↵`, a tab `⇥`, other control characters and
  bytes that are not whole UTF-8 characters (GPT-2 splits some characters over several tokens) `\\xNN`. GPT-2's
  byte markers (`Ġ` for a leading space, `Ċ` for a newline) are decoded, never shown raw.
- Attention goes on the wire as float16, base64 of its little-endian bytes in C order (`encode_array`).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
from typing import Any, Optional, Sequence

import numpy as np

MAX_TOP_K = 100
_CONTROL = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍"}


class ExploreError(ValueError):
  """A bad explore request; `param` names the field (e.g. 'top_k', 'ablations[0].layer')."""

  def __init__(self, message: str, param: Optional[str]):
    super().__init__(message)
    self.param = param


# ---- Readable tokens ---------------------------------------------------------------------------------------------

def _byte_decoder() -> dict[str, int]:
  """The inverse of GPT-2's byte-level alphabet: each of 256 printable characters stands for one byte."""
  # Bytes that are printable Latin-1 (other than space and the soft hyphen) stand for themselves; the other 68 are
  # mapped in order to the characters from U+0100 on (so a space is 'Ġ' = U+0120, a newline 'Ċ' = U+010A).
  printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
  others = [b for b in range(256) if b not in set(printable)]
  table = {chr(b): b for b in printable}
  table.update({chr(256 + i): b for i, b in enumerate(others)})
  return table


def readable(text: str) -> str:
  """`text` with whitespace and control characters made visible (see the module docstring)."""
  out = []
  for char in text:
    if char in _CONTROL:
      out.append(_CONTROL[char])
    elif ord(char) < 32 or ord(char) == 127:
      out.append(f"\\x{ord(char):02x}")
    else:
      out.append(char)
  return "".join(out)


@dataclasses.dataclass(frozen=True)
class TokenTable:
  """Per-id text for a vocabulary, built once per tokenizer.

  Attributes:
    text: What the token contributes to a text on its own (U+FFFD for a partial UTF-8 character).
    display: `readable` form, with partial bytes as `\\xNN`.
    partial: The token is not a whole UTF-8 character sequence on its own.
  """
  text: list
  display: list
  partial: np.ndarray


@functools.lru_cache(maxsize=8)
def _table(tokenizer, vocab_size: int) -> TokenTable:
  texts, displays, partial = [], [], np.zeros(vocab_size, bool)
  specials = set()
  if tokenizer is not None:
    specials = {int(i) for i in tokenizer.backend.get_added_tokens_decoder()}
  byte_level = tokenizer is not None and tokenizer.kind in ("gpt2", "bpe")
  decoder = _byte_decoder() if byte_level else None
  for i in range(vocab_size):
    if tokenizer is None or i >= tokenizer.vocab_size:
      texts.append(f"<{i}>" if tokenizer is None else "")
      displays.append(f"<{i}>" if tokenizer is None else f"<unused {i}>")
      continue
    token = tokenizer.backend.id_to_token(i)
    if token is None:
      texts.append("")
      displays.append(f"<unused {i}>")
    elif i in specials:
      texts.append(token)
      displays.append(token)
    elif byte_level and all(c in decoder for c in token):
      raw = bytes(decoder[c] for c in token)
      try:
        text = raw.decode("utf-8")
        displays.append(readable(text))
      except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        partial[i] = True
        displays.append(readable(raw.decode("utf-8", errors="backslashreplace")))
      texts.append(text)
    elif tokenizer.kind == "gpt1":
      # '</w>' ends a word: the text continues with a space. Decoding one token alone drops it.
      word_end = token.endswith("</w>")
      body = token[:-4] if word_end else token
      texts.append(body + (" " if word_end else ""))
      displays.append(readable(body) + ("·" if word_end else ""))
    else:
      text = tokenizer.decode([i])
      texts.append(text)
      displays.append(readable(text))
  return TokenTable(texts, displays, partial)


def token_table(lm) -> TokenTable:
  """The `TokenTable` of `lm`'s tokenizer over the model's vocabulary (rows past the tokenizer: '<unused i>')."""
  return _table(lm.tokenizer, lm.config.vocab_size)


# ---- Requests ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ExploreRequest:
  """One explore request, validated against a model by `ExploreRequest.parse`.

  Attributes:
    ids: The token ids (from `text`, or given).
    top_k: Candidates per position (1..MAX_TOP_K).
    attention: Return attention probabilities for `layers` x `heads`.
    layers: Layers whose attention is returned (default all).
    heads: Heads whose attention is returned (default all).
    lens_position: Position read by the logit lens (negative counts from the end), or None for no lens.
    ablations: Engine ablations: ("head", layer, head) | ("attn", layer) | ("mlp", layer).
    ablation_position: Position whose next-token distribution the ablation report compares (default the last).
  """
  ids: tuple
  top_k: int = 10
  attention: bool = False
  layers: tuple = ()
  heads: tuple = ()
  lens_position: Optional[int] = None
  ablations: tuple = ()
  ablation_position: int = -1

  @classmethod
  def parse(cls, lm, body: Any) -> "ExploreRequest":
    """Validates a JSON request body (a dict) for `lm`.

    Raises:
      ExploreError: naming the field that is wrong (see the README's Explorer section for the fields).
    """
    cfg = lm.config
    if not isinstance(body, dict):
      raise ExploreError("The request body must be a JSON object", None)
    known = {"text", "ids", "top_k", "attention", "layers", "heads", "lens", "lens_position", "ablations",
             "ablation_position"}
    for key in body:
      if key not in known:
        raise ExploreError(f"Unknown field {key!r}; known fields: {sorted(known)}", key)
    text, ids = body.get("text"), body.get("ids")
    if (text is None) == (ids is None):
      raise ExploreError("Give exactly one of 'text' (a string) or 'ids' (a list of token ids)",
                         "text" if text is None else "ids")
    if text is not None:
      if not isinstance(text, str):
        raise ExploreError(f"'text' must be a string, got {type(text).__name__}", "text")
      if not text:
        raise ExploreError("'text' is empty: give at least one character", "text")
      if lm.tokenizer is None:
        raise ExploreError("This model has no tokenizer: send 'ids' instead of 'text'", "text")
      try:
        ids = lm.tokenizer.encode(text)
      except ValueError as e:
        raise ExploreError(str(e), "text") from None
      field = "text"
    else:
      if not isinstance(ids, list) or not all(_is_int(i) for i in ids):
        raise ExploreError("'ids' must be a list of integers", "ids")
      if not ids:
        raise ExploreError("'ids' is empty: give at least one token id", "ids")
      bad = [i for i in ids if not 0 <= i < cfg.vocab_size]
      if bad:
        raise ExploreError(f"Token id {bad[0]} is outside the vocabulary [0, {cfg.vocab_size})", "ids")
      field = "ids"
    if len(ids) > cfg.block_size:
      raise ExploreError(f"The input is {len(ids)} tokens, longer than the model's context of {cfg.block_size}",
                         field)
    T = len(ids)

    top_k = body.get("top_k", 10)
    if not _is_int(top_k) or not 1 <= top_k <= min(MAX_TOP_K, cfg.vocab_size):
      raise ExploreError(f"'top_k' must be an integer in [1, {min(MAX_TOP_K, cfg.vocab_size)}], got {top_k!r}",
                         "top_k")
    attention = body.get("attention", False)
    if not isinstance(attention, bool):
      raise ExploreError("'attention' must be true or false", "attention")
    layers = _index_list(body.get("layers"), cfg.num_layers, "layers", "layer")
    heads = _index_list(body.get("heads"), cfg.num_heads, "heads", "head")

    lens = body.get("lens", False)
    if not isinstance(lens, bool):
      raise ExploreError("'lens' must be true or false", "lens")
    lens_position = body.get("lens_position")
    if lens_position is not None:
      lens_position = _position(lens_position, T, "lens_position")
    elif lens:
      lens_position = T - 1

    raw = body.get("ablations", [])
    if not isinstance(raw, list):
      raise ExploreError("'ablations' must be a list of {kind, layer[, head]} objects", "ablations")
    ablations = []
    for n, item in enumerate(raw):
      where = f"ablations[{n}]"
      if not isinstance(item, dict) or item.get("kind") not in ("head", "attn", "mlp"):
        raise ExploreError(f"{where} must be an object with 'kind' one of 'head', 'attn', 'mlp'", f"{where}.kind")
      extra = set(item) - {"kind", "layer", "head"}
      if extra:
        raise ExploreError(f"{where} has unknown field(s) {sorted(extra)}", f"{where}.{sorted(extra)[0]}")
      layer = item.get("layer")
      if not _is_int(layer) or not 0 <= layer < cfg.num_layers:
        raise ExploreError(f"{where}.layer must be an integer in [0, {cfg.num_layers}), got {layer!r}",
                           f"{where}.layer")
      if item["kind"] == "head":
        head = item.get("head")
        if not _is_int(head) or not 0 <= head < cfg.num_heads:
          raise ExploreError(f"{where}.head must be an integer in [0, {cfg.num_heads}), got {head!r}",
                             f"{where}.head")
        ablations.append(("head", layer, head))
      else:
        if "head" in item:
          raise ExploreError(f"{where}: 'head' only goes with kind 'head'", f"{where}.head")
        ablations.append((item["kind"], layer))
    ablation_position = _position(body.get("ablation_position", -1), T, "ablation_position")
    return cls(tuple(int(i) for i in ids), top_k, attention, layers, heads, lens_position,
               tuple(dict.fromkeys(ablations)), ablation_position)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _index_list(value, size: int, field: str, what: str) -> tuple:
  if value is None:
    return tuple(range(size))
  if not isinstance(value, list) or not value or not all(_is_int(v) for v in value):
    raise ExploreError(f"'{field}' must be a non-empty list of {what} indices", field)
  for v in value:
    if not 0 <= v < size:
      raise ExploreError(f"Unknown {what} {v}: the model has {size} ({what}s 0..{size - 1})", field)
  return tuple(value)


def _position(value, T: int, field: str) -> int:
  if not _is_int(value) or not -T <= value < T:
    raise ExploreError(f"'{field}' must be an integer in [{-T}, {T}) for this {T}-token input, got {value!r}",
                       field)
  return value % T


# ---- The forward pass --------------------------------------------------------------------------------------------

def engine_for(model):
  """The engine to run `model` on: `model` itself when it is an engine, else the LanguageModel's own."""
  if hasattr(model, "forward"):
    return model
  # The explorer never decodes (`forward` allocates no slot cache): the smallest engine will do.
  return model.engine(num_slots=1)


def _forward(engine, ids: Sequence[int], **kwargs):
  """(logits [T, V], hidden [N+1, T, D] | None, attention [N, H, T, T] | None) of one sequence, float32 numpy."""
  out = engine.forward(np.asarray([ids], np.int32), np.ones((1, len(ids)), bool), **kwargs)
  logits, hidden, attention = out.logits_BTV, out.hidden_NBTD, out.attention_NBHTT
  return (np.asarray(logits, np.float32)[0], None if hidden is None else np.asarray(hidden, np.float32)[:, 0],
          None if attention is None else np.asarray(attention, np.float32)[:, 0])


# ---- Reading the outputs -----------------------------------------------------------------------------------------

def log_softmax(logits_TV: np.ndarray) -> np.ndarray:
  shifted = logits_TV - logits_TV.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _top(logprobs_TV: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k largest entries of each row, largest first (ties: lower id first)."""
  part = np.argpartition(-logprobs_TV, k - 1, axis=-1)[:, :k]
  values = np.take_along_axis(logprobs_TV, part, axis=-1)
  order = np.lexsort((part, -values), axis=-1)
  return np.take_along_axis(part, order, axis=-1)


def _candidates(table: TokenTable, logprobs_V: np.ndarray, ids_K) -> list:
  return [{"id": int(i), "text": table.text[i], "display": table.display[i], "prob": float(np.exp(logprobs_V[i])),
           "logprob": float(logprobs_V[i])} for i in ids_K]


def encode_array(x: np.ndarray) -> dict:
  """An array as float16 on the wire: {"shape", "dtype": "float16", "data": base64 of little-endian C-order bytes}.

  In JavaScript: `new Float16Array(bytes.buffer)` where supported, else decode the halves by hand (static/app.js).
  """
  data = np.ascontiguousarray(x, dtype="<f2")
  return {"shape": list(data.shape), "dtype": "float16", "data": base64.b64encode(data.tobytes()).decode("ascii")}


def decode_array(wire: dict) -> np.ndarray:
  """Inverse of `encode_array` (float32)."""
  data = np.frombuffer(base64.b64decode(wire["data"]), dtype="<f2")
  return data.reshape(wire["shape"]).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _lens_head(lm):
  """A jitted function from residual streams [N, D] to logits [N, V]: the model's own ln_f and unembedding."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gptjax import model as M  # pylint: disable=g-import-not-at-top
  cfg = lm.config
  ln_f = M.layer_norm(cfg, "ln_f")

  def head(params, hidden_ND):
    x_ND = hidden_ND.astype(jnp.float32)
    if cfg.final_norm:
      x_ND = ln_f.apply({"params": params["ln_f"]}, x_ND)
    x_ND = x_ND.astype(cfg.dtype)
    if cfg.tie_embeddings:
      unembed_DV = params["wte"]["embedding"].astype(cfg.dtype).T
    else:
      unembed_DV = params["lm_head"]["kernel"].astype(cfg.dtype)
    return jnp.einsum("ND,DV->NV", x_ND, unembed_DV, preferred_element_type=jnp.float32)

  return jax.jit(head)


def lens_logits(lm, hidden_ND: np.ndarray) -> np.ndarray:
  """Logit lens: residual streams [N, D] read through the final LayerNorm (GPT-2) and the unembedding: [N, V]."""
  return np.asarray(_lens_head(lm)(lm.params, np.asarray(hidden_ND, np.float32)))


def explore(model, text: Optional[str] = None, *, ids: Optional[Sequence[int]] = None, top_k: int = 10,
            attention: bool = False, layers: Optional[Sequence[int]] = None, heads: Optional[Sequence[int]] = None,
            lens: bool = False, lens_position: Optional[int] = None, ablations: Sequence = (),
            ablation_position: int = -1, lm=None) -> dict:
  """Everything the explorer page shows about one text, as a JSON-ready dict (schema: README, "Explorer").

  Args:
    model: A `LanguageModel` (an engine is made for it once) or an engine whose `lm` is `lm`.
    text: The input text (or give `ids`).
    ids: Token ids instead of text.
    top_k: Candidates per position.
    attention: Include attention probabilities [len(layers), len(heads), T, T] (float16 on the wire).
    layers, heads: Which attention maps (default all).
    lens: Include the logit lens at `lens_position` (default the last position).
    lens_position: Position for the logit lens (implies `lens`); negative counts from the end.
    ablations: ("head", layer, head) | ("attn", layer) | ("mlp", layer) tuples, or their JSON objects.
    ablation_position: Position whose next-token distribution the ablation report compares.
    lm: The `LanguageModel` when `model` is an engine without an `lm` attribute.

  Returns:
    The reply of `POST /v1/explore`.

  Raises:
    ExploreError: a bad argument (its `param` names it).
  """
  lm = lm if lm is not None else getattr(model, "lm", model)
  body = {"top_k": top_k, "attention": attention, "lens": lens, "ablation_position": ablation_position,
          "ablations": [a if isinstance(a, dict) else dict(zip(("kind", "layer", "head"), a)) for a in ablations]}
  body.update({"text": text} if text is not None else {"ids": None if ids is None else [int(i) for i in ids]})
  for key, value in (("layers", layers), ("heads", heads), ("lens_position", lens_position)):
    if value is not None:
      body[key] = list(value) if key != "lens_position" else value
  return run(engine_for(model), lm, ExploreRequest.parse(lm, body))


def run(engine, lm, request: ExploreRequest) -> dict:
  """Runs a validated request on `engine` (whose model is `lm`); see `explore`."""
  table = token_table(lm)
  ids = list(request.ids)
  T, k = len(ids), request.top_k
  logits_TV, hidden_NTD, attention_NHTT = _forward(
      engine, ids, hidden_states=request.lens_position is not None, attention=request.attention)
  logprobs_TV = log_softmax(logits_TV)
  top_TK = _top(logprobs_TV, k)
  entropy_T = -np.einsum("TV,TV->T", np.exp(logprobs_TV), logprobs_TV)  # nats

  # GLTR: each token's rank and probability under the prediction made one position earlier.
  targets = np.asarray(ids[1:], np.int64)
  target_logits = logits_TV[np.arange(T - 1), targets]
  ranks = (logits_TV[:-1] > target_logits[:, None]).sum(axis=-1) + 1
  target_logprobs = logprobs_TV[np.arange(T - 1), targets]
  tokens = []
  for t, i in enumerate(ids):
    entry = {"id": i, "text": table.text[i], "display": table.display[i], "partial": bool(table.partial[i]),
             "rank": None, "prob": None, "logprob": None}
    if t > 0:
      entry.update(rank=int(ranks[t - 1]), prob=float(np.exp(target_logprobs[t - 1])),
                   logprob=float(target_logprobs[t - 1]))
    tokens.append(entry)

  reply = {
      "object": "explore",
      "model": {"num_layers": lm.config.num_layers, "num_heads": lm.config.num_heads,
                "context": lm.config.block_size, "vocab_size": lm.config.vocab_size},
      "tokens": tokens,
      "positions": [{"top": _candidates(table, logprobs_TV[t], top_TK[t]), "entropy": float(entropy_T[t])}
                    for t in range(T)],
      "next": _next_candidates(lm, table, ids, logprobs_TV[-1], top_TK[-1]),
      "attention": None, "lens": None, "ablation": None,
  }

  if request.attention:
    maps = attention_NHTT[np.asarray(request.layers)][:, np.asarray(request.heads)]
    reply["attention"] = {"layers": list(request.layers), "heads": list(request.heads), **encode_array(maps)}

  if request.lens_position is not None:
    p = request.lens_position
    lens_logprobs_NV = log_softmax(lens_logits(lm, hidden_NTD[:, p]))
    lens_top_NK = _top(lens_logprobs_NV, k)
    layers = []
    for n in range(lens_logprobs_NV.shape[0]):
      entry = {"layer": n - 1, "name": "embeddings" if n == 0 else f"block {n - 1}",
               "top": _candidates(table, lens_logprobs_NV[n], lens_top_NK[n]), "target": None}
      if p + 1 < T:
        target = ids[p + 1]
        rank = int((lens_logprobs_NV[n] > lens_logprobs_NV[n, target]).sum()) + 1
        entry["target"] = {"id": target, "display": table.display[target], "rank": rank,
                           "prob": float(np.exp(lens_logprobs_NV[n, target]))}
      layers.append(entry)
    reply["lens"] = {"position": p, "layers": layers}

  if request.ablations:
    p = request.ablation_position
    ablated_TV, _, _ = _forward(engine, ids, ablations=request.ablations)
    ablated_V = log_softmax(ablated_TV[p:p + 1])[0]
    base_V = logprobs_TV[p]
    shown = list(dict.fromkeys([int(i) for i in top_TK[p]] + [int(i) for i in _top(ablated_V[None], k)[0]]))
    shown.sort(key=lambda i: -max(base_V[i], ablated_V[i]))
    base_P, ablated_P = np.exp(base_V), np.exp(ablated_V)
    reply["ablation"] = {
        "ablations": [dict(zip(("kind", "layer", "head"), a)) for a in request.ablations],
        "position": p,
        # KL(intact || ablated) in nats over the whole vocabulary: how much the ablation moves the distribution.
        "kl": float((base_P * (base_V - ablated_V)).sum()),
        "tokens": [{"id": i, "display": table.display[i], "prob": float(base_P[i]),
                    "ablated_prob": float(ablated_P[i]), "delta": float(ablated_P[i] - base_P[i])} for i in shown],
    }
  return reply


def _next_candidates(lm, table: TokenTable, ids: list, logprobs_V: np.ndarray, top_K) -> list:
  """The last position's candidates, each with `append`: the exact text it adds to the decoded input."""
  candidates = _candidates(table, logprobs_V, top_K)
  tokenizer = lm.tokenizer
  if tokenizer is None:
    return candidates
  context = tokenizer.decode([i for i in ids if i < tokenizer.vocab_size])
  for c in candidates:
    if c["id"] < tokenizer.vocab_size:
      # Decoding context + token and cutting the context off gives what the token adds where decoding one token
      # alone would not (GPT-1 joins words with spaces; GPT-2 completes characters split over tokens).
      whole = tokenizer.decode([i for i in ids if i < tokenizer.vocab_size] + [c["id"]])
      c["append"] = whole[len(context):] if whole.startswith(context) else c["text"]
    else:
      c["append"] = ""
  return candidates


def sampling_distribution(probs: Sequence[float], temperature: float = 1.0, top_k: int = 0,
                          top_p: float = 1.0) -> np.ndarray:
  """What the sampler would draw from, restricted to the given (e.g. shown top-k) probabilities, renormalised.

  Same order as `LanguageModel.generate`: temperature, then top-k (ties with the k-th kept), then top-p (token i
  kept iff the mass before it is < top_p). The page does the same in JavaScript (static/app.js `sampling`).
  """
  p = np.asarray(probs, np.float64)
  if temperature == 0:
    out = np.zeros_like(p)
    out[int(np.argmax(p))] = 1.0
    return out
  logits = np.log(np.maximum(p, 1e-300)) / temperature
  q = np.exp(logits - logits.max())
  q /= q.sum()
  if top_k:
    kth = np.sort(q)[::-1][min(top_k, len(q)) - 1]
    q = np.where(q >= kth, q, 0.0)
    q /= q.sum()
  if top_p < 1.0:
    order = np.argsort(-q, kind="stable")
    before = np.cumsum(q[order]) - q[order]
    keep = np.zeros_like(q, bool)
    keep[order] = before < top_p
    q = np.where(keep, q, 0.0)
    q /= q.sum()
  return q


__all__ = ["ExploreError", "ExploreRequest", "explore", "run", "token_table", "readable", "lens_logits",
           "encode_array", "decode_array", "sampling_distribution", "engine_for", "log_softmax", "MAX_TOP_K"]
