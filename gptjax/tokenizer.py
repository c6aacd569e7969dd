"""Tokenizers for GPT-1, GPT-2 and models trained here, all backed by Hugging Face `tokenizers`.

Four kinds share one `Tokenizer` class; only how they are built and saved differs:

- `'gpt2'`: GPT-2's byte-level BPE (50257 ids, `<|endoftext|>` = 50256). Any text encodes and decodes back exactly.
- `'gpt1'`: GPT-1 (OpenAI GPT) BPE: lower-cased, accents stripped, BERT-style word splitting, `</w>` word ends,
  `<unk>` for unknown characters. Built exactly as transformers' `OpenAIGPTConverter` builds it. Lossy by design.
- `'bpe'`: a byte-level BPE trained by `train_bpe`: GPT-2's mechanics with our own vocabulary.
- `'char'`: one id per character (nanoGPT's shakespeare_char). Unknown characters raise instead of vanishing.

A saved tokenizer is a folder: `tokenizer.json` (the whole pipeline), `gptjax_tokenizer.json` (our `kind`),
`tokenizer_config.json` (so `transformers.AutoTokenizer` can load it) and, for BPE kinds, `vocab.json` +
`merges.txt` (the files the original GPT-1/GPT-2 code and transformers' `vocab=`/`merges=` arguments read).
`load_tokenizer` reads such a folder, a bare `tokenizer.json`, an original vocab/merges pair, or a Hub repository.

`eos_id` is the id of `<|endoftext|>` when the vocabulary has it, else None: GPT-1 has no such token, nor has a
character tokenizer unless one adds it with `add_special_tokens(['<|endoftext|>'])`.
"""

import json
import os
import pathlib
import re
from collections.abc import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from gptjax import paths

EOS = "<|endoftext|>"
KINDS = ("gpt2", "gpt1", "bpe", "char")
TOKENIZER_FILE = "tokenizer.json"
MARKER_FILE = "gptjax_tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
VOCAB_FILE, MERGES_FILE = "vocab.json", "merges.txt"
# Fetched from the Hub: the files any of the layouts above needs, and nothing else (no weights).
_HUB_FILES = [TOKENIZER_FILE, MARKER_FILE, CONFIG_FILE, VOCAB_FILE, MERGES_FILE]
# GPT-2's vocabulary: 256 byte tokens + 50000 merges + <|endoftext|>.
_GPT2_VOCAB_SIZE = 50257
# The character tokenizer's WordLevel model needs some unk name; it is never in the vocabulary, so an unknown
# character makes `tokenizers` raise, which `encode` turns into an error naming the character.
_CHAR_UNK = "[UNK]"


class Tokenizer:
  """A GPT tokenizer: text <-> token ids, with the vocabulary size the model's embedding needs.

  Attributes:
    kind: 'gpt2', 'gpt1', 'bpe' or 'char' (see the module docstring).
    backend: the wrapped `tokenizers.Tokenizer`, for pipelines that want the Rust object itself.
  """

  def __init__(self, backend: tokenizers.Tokenizer, kind: str):
    if kind not in KINDS:
      raise ValueError(f"Unknown tokenizer kind {kind!r}; expected one of {KINDS}.")
    self.backend = backend
    self.kind = kind
    self._update_size()

  def _update_size(self) -> None:
    # max id + 1 rather than a count: an embedding must have a row for the largest id even if ids have holes.
    vocab = self.backend.get_vocab(with_added_tokens=True)
    self._vocab_size = max(vocab.values()) + 1 if vocab else 0

  @property
  def vocab_size(self) -> int:
    """Rows the model's token embedding needs: largest id + 1, added special tokens included."""
    return self._vocab_size

  @property
  def eos_id(self) -> int | None:
    """Id of `<|endoftext|>` (50256 for GPT-2), or None when the vocabulary has no such token (GPT-1)."""
    return self.backend.token_to_id(EOS)

  def __repr__(self) -> str:
    return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`. `<|endoftext|>` and added special tokens inside the text map to their own ids.

    Raises:
      TypeError: `text` is not a str.
      ValueError: a character tokenizer meets a character outside its vocabulary.
    """
    if not isinstance(text, str):
      raise TypeError(f"encode expects a str, got {type(text).__name__}.")
    try:
      return self.backend.encode(text, add_special_tokens=False).ids
    except Exception:
      self._raise_unknown_char([text])
      raise

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of every text, in parallel in Rust: the fast path for preparing data sets."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
      raise TypeError("encode_batch expects a list of str (use encode for a single str).")
    try:
      return [e.ids for e in self.backend.encode_batch_fast(list(texts), add_special_tokens=False)]
    except Exception:
      self._raise_unknown_char(texts)
      raise

  def _raise_unknown_char(self, texts: Iterable[str]) -> None:
    # Only the character tokenizer fails on unknown input (the BPE kinds fall back to bytes or <unk>), and
    # `tokenizers` only says "Missing [UNK] token": find the character here, off the fast path.
    if self.kind != "char":
      return
    for text in texts:
      for char in text:
        if self.backend.token_to_id(char) is None:
          raise ValueError(
              f"Character {char!r} (U+{ord(char):04X}) is not in this character tokenizer's vocabulary "
              f"of {self.vocab_size}; build it with char_tokenizer() over text that contains it.") from None

  def decode(self, ids: Sequence[int]) -> str:
    """Text of a 1-D sequence of ids (list, numpy or jax array). Special tokens are kept, so that
    `decode(encode(s)) == s` for the byte-level kinds.

    Raises:
      ValueError: an id is negative or >= vocab_size (e.g. a model whose embedding is larger than the
        tokenizer, nanoGPT#483), or `ids` is not 1-D.
    """
    return self.backend.decode(self._checked(ids), skip_special_tokens=False)

  def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
    """`decode` of every row of `batch` (e.g. a [B, L] array of samples)."""
    return self.backend.decode_batch([self._checked(ids) for ids in batch], skip_special_tokens=False)

  def _checked(self, ids: Sequence[int]) -> list[int]:
    array = np.asarray(ids)
    if array.ndim != 1:
      raise ValueError(f"decode expects a 1-D sequence of ids, got shape {array.shape}.")
    if array.size == 0:
      return []
    if array.dtype.kind not in "iu":
      raise TypeError(f"Token ids must be integers, got dtype {array.dtype}.")
    for bad in (int(array.max()), int(array.min())):
      if not 0 <= bad < self.vocab_size:
        raise ValueError(f"Token id {bad} is outside the vocabulary (vocab_size={self.vocab_size}): "
                         f"was it produced by a model with a larger embedding than this tokenizer?")
    return array.tolist()

  def token_to_id(self, token: str) -> int | None:
    """Id of `token`, or None when it is not in the vocabulary (as `tokenizers` does)."""
    return self.backend.token_to_id(token)

  def id_to_token(self, token_id: int) -> str:
    """The token string of `token_id` (raw, e.g. 'Ġworld' or 'world</w>')."""
    token = self.backend.id_to_token(int(token_id)) if 0 <= int(token_id) < self.vocab_size else None
    if token is None:
      raise ValueError(f"Token id {token_id} is outside the vocabulary (vocab_size={self.vocab_size}).")
    return token

  def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
    """Adds tokens that always encode whole (e.g. GPT-1 fine-tuning's `_start_`, `_delimiter_`, `_classify_`).

    New tokens get ids from `vocab_size` upward, so `vocab_size` grows and the model's embedding must be
    resized to match (transformers#1062). Tokens already present keep their id.

    Returns:
      The id of each token, in order.
    """
    if isinstance(tokens, str) or not all(isinstance(t, str) and t for t in tokens):
      raise TypeError("add_special_tokens expects a list of non-empty str, e.g. ['_start_'].")
    # normalized=False: matched on the raw text, so GPT-1's lower-casing cannot hide them.
    self.backend.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in tokens])
    self._update_size()
    return [self.backend.token_to_id(t) for t in tokens]

  def save(self, directory: str | os.PathLike) -> None:
    """Writes the tokenizer to `directory` (created if needed) so that `load_tokenizer(directory)` restores it,
    and so that `transformers.AutoTokenizer.from_pretrained(directory)` gives the same ids."""
    with paths.local_folder_for(directory) as local:  # A cloud folder: written here, then uploaded.
      self.backend.save(str(local / TOKENIZER_FILE))
      if self.kind != "char":
        # The original OpenAI file pair; trained 'bpe' gets it too, since GPT2Tokenizer reads it the same way.
        self.backend.model.save(str(local))
      _write_json(local / CONFIG_FILE, self._hf_config())
      _write_json(local / MARKER_FILE, {"kind": self.kind, "vocab_size": self.vocab_size})

  def _hf_config(self) -> dict:
    special = self.backend.get_added_tokens_decoder()
    extra = [t.content for _, t in sorted(special.items()) if t.special and t.content not in (EOS, "<unk>")]
    if self.kind == "gpt1":
      config = {"tokenizer_class": "OpenAIGPTTokenizer", "unk_token": "<unk>"}
    elif self.kind == "char":
      config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    else:
      config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False}
    if self.kind != "gpt1" and self.eos_id is not None:
      config.update(bos_token=EOS, eos_token=EOS)
    if extra:
      # transformers 4's key; transformers 5 reads it as its `extra_special_tokens`.
      config["additional_special_tokens"] = extra
    return config


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
  """Trains a GPT-2-style byte-level BPE on `texts` (a str counts as one text).

  The initial alphabet is all 256 bytes, so any text encodes; `<|endoftext|>` is reserved (id 0). `vocab_size` is
  an upper bound: a small corpus may run out of pairs to merge first; read the result's `vocab_size`.

  Raises:
    ValueError: vocab_size < 257 (the 256 bytes plus `<|endoftext|>`).
  """
  if vocab_size < 257:
    raise ValueError(f"vocab_size={vocab_size} is too small for byte-level BPE: it needs at least 257 "
                     f"(256 byte tokens + {EOS}).")
  backend = tokenizers.Tokenizer(models.BPE())
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                special_tokens=[EOS],
                                show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  backend.train_from_iterator([texts] if isinstance(texts, str) else texts, trainer)
  return Tokenizer(backend, "bpe")


def char_tokenizer(text_or_texts: str | Iterable[str]) -> Tokenizer:
  """A character-level tokenizer: one id per distinct character of the text(s), ids in sorted character order
  (as nanoGPT's shakespeare_char). It has no `<|endoftext|>` (eos_id is None) unless one adds it."""
  texts = [text_or_texts] if isinstance(text_or_texts, str) else text_or_texts
  chars = sorted(set().union(*map(set, texts)))
  if not chars:
    raise ValueError("char_tokenizer needs at least one character of text.")
  backend = tokenizers.Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=_CHAR_UNK))
  # Every character is its own piece ('[\s\S]': '.' would skip newlines); Fuse joins them back without spaces.
  backend.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), behavior="isolated")
  backend.decoder = decoders.Fuse()
  return Tokenizer(backend, "char")


def load_tokenizer(name_or_dir: str | os.PathLike) -> Tokenizer:
  """Loads a tokenizer from a folder, a `tokenizer.json` file, or a Hugging Face Hub repository.

  A folder may hold `tokenizer.json` (preferred) or an original `vocab.json` + `merges.txt` pair: GPT-2 byte-level
  BPE, or GPT-1's BPE when the vocabulary's tokens end in `</w>`. Hub names (`gpt2`, `openai-gpt`, `user/repo`)
  are tried only when `name_or_dir` is not an existing path; only the tokenizer files are downloaded.

  Raises:
    FileNotFoundError: a missing folder or file, or a folder without tokenizer files.
    ValueError: a tokenizer file that cannot be read (the message names it).
    OSError: not a local path, and the Hub could not provide it.
  """
  if paths.is_uri(name_or_dir):  # A cloud folder or file: read from a local copy (tokenizers reads local files).
    if not paths.path(name_or_dir).exists():
      raise FileNotFoundError(f"Tokenizer folder or file {name_or_dir} does not exist.")
    with paths.local_copy(name_or_dir) as local:
      return load_tokenizer(local)
  path = pathlib.Path(name_or_dir).expanduser()
  if path.is_file():
    marker = path.parent / MARKER_FILE if path.name == TOKENIZER_FILE else None
    return _from_tokenizer_json(path, marker if marker and marker.is_file() else None)
  if path.is_dir():
    return _load_dir(path)
  name = str(name_or_dir)
  if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) or name.startswith(".") or name.endswith(".json"):
    raise FileNotFoundError(f"Tokenizer folder or file {path} does not exist.")
  return _load_dir(_download(name))


def _load_dir(directory: pathlib.Path) -> Tokenizer:
  marker = directory / MARKER_FILE
  marker = marker if marker.is_file() else None
  if (directory / TOKENIZER_FILE).is_file():
    return _from_tokenizer_json(directory / TOKENIZER_FILE, marker)
  vocab_path, merges_path = directory / VOCAB_FILE, directory / MERGES_FILE
  if vocab_path.is_file() and not merges_path.is_file():
    raise FileNotFoundError(f"{directory} has {VOCAB_FILE} but no {MERGES_FILE}: a BPE tokenizer needs both.")
  if not vocab_path.is_file():
    raise FileNotFoundError(f"No tokenizer files in {directory}: looked for {TOKENIZER_FILE}, or {VOCAB_FILE} "
                            f"+ {MERGES_FILE}. Found: {sorted(p.name for p in directory.iterdir()) or 'nothing'}.")
  vocab = _read_json(vocab_path)
  if not isinstance(vocab, dict):
    raise ValueError(f"{vocab_path} must map tokens to ids, got a JSON {type(vocab).__name__}.")
  try:
    _, merges = models.BPE.read_file(str(vocab_path), str(merges_path))
  except Exception as e:
    raise ValueError(f"Could not read {merges_path}: {e}") from e
  gpt1 = any(token.endswith("</w>") for token in vocab)
  backend = _gpt1_backend(vocab, merges) if gpt1 else _gpt2_backend(vocab, merges)
  kind = _read_marker(marker).get("kind") if marker else "gpt1" if gpt1 else _byte_level_kind(backend)
  return Tokenizer(backend, kind)


def _gpt2_backend(vocab: dict[str, int], merges: list) -> tokenizers.Tokenizer:
  # transformers' GPT2Tokenizer: no normalizer, no prefix space, byte-level decoding; <|endoftext|> is special.
  backend = tokenizers.Tokenizer(
      models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = decoders.ByteLevel()
  if EOS in vocab:
    backend.add_special_tokens([tokenizers.AddedToken(EOS, special=True, normalized=False)])
  return backend


def _gpt1_backend(vocab: dict[str, int], merges: list) -> tokenizers.Tokenizer:
  # transformers' convert_slow_tokenizer.OpenAIGPTConverter, component for component.
  backend = tokenizers.Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", end_of_word_suffix="</w>",
                                            fuse_unk=False))
  if "<unk>" in vocab:
    backend.add_special_tokens(["<unk>"])
  backend.normalizer = normalizers.BertNormalizer(lowercase=True)
  backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  backend.decoder = decoders.BPEDecoder(suffix="</w>")
  return backend


def _from_tokenizer_json(path: pathlib.Path, marker: pathlib.Path | None) -> Tokenizer:
  try:
    backend = tokenizers.Tokenizer.from_file(str(path))
  except Exception as e:
    raise ValueError(f"Could not read {path}: {e}") from e
  if marker:
    info = _read_marker(marker)
    tokenizer = Tokenizer(backend, info.get("kind"))
    if info.get("vocab_size", tokenizer.vocab_size) != tokenizer.vocab_size:
      raise ValueError(f"{marker} says vocab_size={info['vocab_size']} but {path} has "
                       f"{tokenizer.vocab_size} ids: the files are from different tokenizers.")
    return tokenizer
  model = backend.model
  if isinstance(model, models.WordLevel):
    return Tokenizer(backend, "char")
  if isinstance(model, models.BPE) and model.end_of_word_suffix == "</w>":
    return Tokenizer(backend, "gpt1")
  if isinstance(model, models.BPE) and isinstance(backend.decoder, decoders.ByteLevel):
    return Tokenizer(backend, _byte_level_kind(backend))
  raise ValueError(f"{path} is neither a byte-level BPE, a GPT-1 BPE nor a character tokenizer; add a "
                   f"{MARKER_FILE} beside it with {{\"kind\": ...}} (one of {KINDS}) if it is one of them.")


def _byte_level_kind(backend: tokenizers.Tokenizer) -> str:
  # GPT-2's own vocabulary, or some other byte-level BPE (ours from train_bpe, or a third party's).
  gpt2 = backend.get_vocab_size(with_added_tokens=False) == _GPT2_VOCAB_SIZE and backend.token_to_id(EOS) == 50256
  return "gpt2" if gpt2 else "bpe"


def _download(name: str) -> pathlib.Path:
  try:
    import huggingface_hub  # Imported here: only Hub names need it.
    return pathlib.Path(huggingface_hub.snapshot_download(name, allow_patterns=_HUB_FILES))
  except Exception as e:
    raise OSError(f"{name!r} is not a local folder or file, and the Hugging Face Hub could not provide it "
                  f"({type(e).__name__}: {e}). Check the name, or download the tokenizer files "
                  f"({', '.join(_HUB_FILES)}) while online and pass their folder.") from e


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (ValueError, OSError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors.
    raise ValueError(f"Could not read {path}: {e}") from e


def _read_marker(path: pathlib.Path) -> dict:
  info = _read_json(path)
  if not isinstance(info, dict):
    raise ValueError(f"{path} must be a JSON object with a 'kind', got a JSON {type(info).__name__}.")
  return info


def _write_json(path: pathlib.Path, value) -> None:
  path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
