"""Text sources -> one cached token file per split -> deterministic [B, L+1] windows.

A source string picks the text:

- `builtin:python` (the default): the running interpreter's standard-library `*.py` sources, minus tests and
  site-packages, sorted, capped at `builtin_max_bytes`. Works offline on any machine and ships no third-party
  text. (CPython 3.11 has ~12.6 MB of such source; it differs between Python versions, and so do the tokens.)
- `text:<glob>`: local UTF-8 files, one document per file, in sorted path order (`**` recurses). They are read
  into memory (fine up to a few GB); larger corpora belong in TFDS, which is streamed.
- `tfds:<name>[/<config>][:<version>][:<feature>]`: a TFDS dataset read with random access from array_record
  files (no TensorFlow). The text feature is found by itself when there is exactly one `tfds.features.Text`.

Validation text is the dataset's `validation` (else `test`) split when it has one; otherwise the tail of the train
text is held out: the last `val_fraction` of the examples of a TFDS split (there are many, already shuffled by
TFDS), the last `val_fraction` of the characters of local files (there may be a single file, e.g. Shakespeare).
A Hugging Face dataset without such a split holds out its HEAD instead: the first `val_fraction` of its documents
(by the split's recorded size; 1,000 documents when unrecorded), because a stream reaches its tail only after
reading everything.

Documents are joined with the tokenizer's `eos_id` between them (none for a char tokenizer). Each split is
tokenised once into `<cache_dir>/<key>/{train,val}.bin`, where the key hashes the source's identity, the
tokenizer's saved files and the validation rule; `meta.json`, written last, marks the entry complete. A cloud
`cache_dir` (`gs://...`, see `gptjax.paths`) is a cache shared between machines: an entry found there is copied
into the local default cache (under the same key) and memory-mapped from it; one tokenised here is uploaded
there, `meta.json` last. The tokenizer folder may be a cloud folder too.

Batches are random windows drawn from `np.random.default_rng([seed, step])` alone: no iterator state, so a run
resumed at step k sees exactly the batches an uninterrupted run sees, and the data position to checkpoint is
just the step.
"""

import collections
import glob
import hashlib
import itertools
import json
import multiprocessing
import os
import pathlib
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Iterable, Iterator

import numpy as np
import tqdm
from absl import logging

from gptjax import paths
from gptjax.corpus import Corpus, Documents  # noqa: F401  (part of this module's API)
from gptjax import tokenizer as tokenizer_lib

DEFAULT_SOURCE = "builtin:python"
DEFAULT_CACHE_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "gptjax", "tokens")
# 10 MB of stdlib source: ~3M GPT-2 tokens, tokenised in seconds on one core.
DEFAULT_BUILTIN_MAX_BYTES = 10_000_000
# Bump when the file layout or the splitting rules change, so old cache entries are not reused.
_CACHE_VERSION = 1
_SPEC_FILE = "gptjax_data_spec.json"  # Beside the saved tokenizer: which spec built it; written last.
# Not "corpus": the standard library's own tests, vendored third-party code, and installed packages.
_BUILTIN_SKIP = {"test", "tests", "site-packages", "dist-packages", "__pycache__", "idlelib", "turtledemo"}


class TokenDataset:
  """One split's tokens in a flat binary file (uint16 or uint32), read through a fresh memmap per call.

  Reopening rather than holding one memmap keeps resident memory flat over long runs (nanoGPT#287).
  """

  def __init__(self, path: str | os.PathLike, dtype, name: str = "train"):
    self.path = pathlib.Path(path)
    self.dtype = np.dtype(dtype)
    self.name = name
    self.num_tokens = self.path.stat().st_size // self.dtype.itemsize

  def __repr__(self) -> str:
    return f"TokenDataset({self.name!r}, num_tokens={self.num_tokens}, path='{self.path}')"

  def tokens(self) -> np.ndarray:
    """All tokens, as a read-only memmap (1-D)."""
    return np.memmap(self.path, dtype=self.dtype, mode="r")

  def batch(self, step: int, batch_size: int, seq_len: int, seed: int, *,
            process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """Random windows of `seq_len + 1` tokens (inputs plus shifted targets), a function of (seed, step) only.

    Args:
      step: training step; any step can be drawn in any order (resume = just start at step k).
      batch_size: the GLOBAL batch size, summed over processes.
      seq_len: model context length L.
      seed: data seed.
      process_index, process_count: this process's contiguous slice of the global batch; concatenating the
        slices of processes 0..count-1 gives the single-process batch.

    Returns:
      int32 [batch_size // process_count, seq_len + 1].
    """
    local = self._local_size(batch_size, seq_len, process_index, process_count)
    if step < 0 or seed < 0:
      raise ValueError(f"step and seed must be >= 0, got step={step}, seed={seed}")
    # Window starts s in [0, N - L - 1], so s + L + 1 <= N.
    starts = np.random.default_rng([seed, step]).integers(0, self.num_tokens - seq_len, size=batch_size)
    return self._gather(starts[process_index * local:(process_index + 1) * local], seq_len)

  def eval_batches(self, batch_size: int, seq_len: int, num_batches: int | None = None, *,
                   process_index: int = 0, process_count: int = 1) -> Iterator[np.ndarray]:
    """A fixed sequence of batches, the same at every call, for comparable validation losses.

    Window i starts at token i * seq_len, so every token after the first is a target exactly once. When the
    split has fewer windows than `batch_size * num_batches` the windows repeat cyclically, keeping the batch
    shape (and the jitted eval step) fixed.

    Args:
      batch_size, seq_len, process_index, process_count: as in `batch`.
      num_batches: how many batches; None = enough to cover every window once.

    Yields:
      int32 [batch_size // process_count, seq_len + 1].
    """
    local = self._local_size(batch_size, seq_len, process_index, process_count)
    num_windows = (self.num_tokens - 1) // seq_len
    if num_batches is None:
      num_batches = -(-num_windows // batch_size)
    for b in range(num_batches):
      window = (np.arange(batch_size) + b * batch_size) % num_windows
      yield self._gather(window[process_index * local:(process_index + 1) * local] * seq_len, seq_len)

  def _local_size(self, batch_size, seq_len, process_index, process_count) -> int:
    if self.num_tokens < seq_len + 1:
      raise ValueError(
          f"The {self.name} split has {self.num_tokens} tokens, fewer than the {seq_len + 1} (seq_len + 1) "
          f"that one window needs: use more text, a smaller seq_len, or (for val) a larger val_fraction.")
    if batch_size < 1 or batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} must be positive and divisible by process_count {process_count}")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} is outside [0, process_count={process_count})")
    return batch_size // process_count

  def _gather(self, starts: np.ndarray, seq_len: int) -> np.ndarray:
    return self.tokens()[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)


def prepare(
    source: str = DEFAULT_SOURCE,
    tokenizer_spec: str = "bpe:4096",
    *,
    cache_dir: str | os.PathLike | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    tfds_data_dir: str | None = None,
    download: bool = True,
    builtin_max_bytes: int = DEFAULT_BUILTIN_MAX_BYTES,
    progress: bool = True,
    num_workers: int | None = None,
) -> tuple[tokenizer_lib.Tokenizer, TokenDataset, TokenDataset]:
  """Text source + tokenizer spec -> (tokenizer, train tokens, val tokens), tokenising only on a cache miss.

  Args:
    source: see the module docstring.
    tokenizer_spec: `char` (a character tokenizer over the corpus), `bpe:<vocab size>` (a byte-level BPE
      trained on the train text), or anything `load_tokenizer` takes (a folder, `gpt2`, ...).
    cache_dir: where token files go (default `~/.cache/gptjax/tokens`).
    tokenizer_dir: where the tokenizer is saved (the trainer passes `<workdir>/tokenizer`). When it already
      holds one, that one is reloaded instead of rebuilt, so a resumed run uses identical ids.
    val_fraction: share held out for validation when the source has no validation split, in (0, 1).
    tfds_data_dir: TFDS data_dir (None: $TFDS_DATA_DIR or ~/tensorflow_datasets).
    download: let TFDS download and prepare a dataset that is not in `tfds_data_dir` yet.
    builtin_max_bytes: cap on the bytes of `builtin:python` source read.
    progress: show tqdm bars while tokenising.
    num_workers: processes that tokenise; None = every core for `hf:` sources (streams of any size), 1 otherwise.

  Returns:
    (tokenizer, train, val).
  """
  corpus = load_corpus(source, val_fraction=val_fraction, tfds_data_dir=tfds_data_dir, download=download,
                       builtin_max_bytes=builtin_max_bytes)
  tokenizer = build_tokenizer(tokenizer_spec, corpus, tokenizer_dir)
  fingerprint = _fingerprint(tokenizer)
  key = hashlib.sha256(json.dumps([_CACHE_VERSION, corpus.identity, fingerprint]).encode()).hexdigest()[:20]
  entry = paths.path(cache_dir or DEFAULT_CACHE_DIR) / key
  dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32)
  splits = {"train": corpus.train, "val": corpus.val}
  files = [f"{name}.bin" for name in splits] + ["meta.json"]
  shared, entry = (entry, paths.path(DEFAULT_CACHE_DIR) / key) if paths.is_uri(entry) else (None, entry)
  if shared is not None and not _cache_complete(entry, dtype) and _cache_complete(shared, dtype):
    paths.download_dir(shared, entry, names=files)  # meta.json last: a killed copy is not trusted.
    logging.info("Copied token cache %s to %s.", shared, entry)
  if not _cache_complete(entry, dtype):
    entry.mkdir(parents=True, exist_ok=True)
    if num_workers is None:
      num_workers = min(os.cpu_count() or 1, 16) if source.startswith("hf:") else 1
    counts = {name: _tokenize_to_file(docs, tokenizer, entry / f"{name}.bin", dtype, name, progress, num_workers)
              for name, docs in splits.items()}
    meta = {"source": source, "tokenizer": tokenizer_spec, "vocab_size": tokenizer.vocab_size,
            "dtype": dtype.name, "num_tokens": counts, "identity": corpus.identity}
    tmp = entry / f"meta.json.tmp-{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, entry / "meta.json")  # Last, and atomic: from here on the entry is trusted.
    logging.info("Tokenised %s into %s: %s tokens.", source, entry, counts)
  else:
    logging.info("Reusing token cache %s.", entry)
  if shared is not None and not _cache_complete(shared, dtype):
    paths.upload_dir(entry, shared, names=files, last="meta.json")
    logging.info("Uploaded token cache %s to %s.", entry, shared)
  return tokenizer, *(TokenDataset(entry / f"{name}.bin", dtype, name) for name in splits)


def load_corpus(source: str, *, val_fraction: float = 0.1, tfds_data_dir: str | None = None,
                download: bool = True, builtin_max_bytes: int = DEFAULT_BUILTIN_MAX_BYTES) -> Corpus:
  """The documents of `source` split into train and val (see the module docstring for the rules)."""
  if not 0 < val_fraction < 1:
    raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
  kind, _, arg = source.partition(":")
  if kind == "text" and arg:
    paths = sorted(p for p in glob.glob(os.path.expanduser(arg), recursive=True) if os.path.isfile(p))
    if not paths:
      raise FileNotFoundError(f"No files match the glob {arg!r} (source {source!r}).")
    docs = [_read_utf8(p) for p in paths]
  elif source == "builtin:python":
    docs = _python_stdlib(builtin_max_bytes)
  elif kind == "tfds" and arg:
    from gptjax import tfds_source  # pylint: disable=g-import-not-at-top  (TFDS is slow to import)
    return tfds_source.corpus(arg, val_fraction, tfds_data_dir, download)
  elif kind == "hf" and arg:
    from gptjax import hf_datasets  # pylint: disable=g-import-not-at-top  (needs the `datasets` extra)
    return hf_datasets.corpus(arg, val_fraction)
  else:
    raise ValueError(f"Unknown data source {source!r}: expected 'builtin:python', 'text:<glob>', "
                     f"'tfds:<name>[/<config>][:<feature>]' or 'hf:<dataset>[/<config>][:<split>]'.")
  num_documents, docs = len(docs), [d for d in docs if d]  # An empty document would give two eos in a row.
  if not docs:
    raise ValueError(f"The source {source!r} has no text: {num_documents} documents, all empty.")
  digest = hashlib.sha256()
  for doc in docs:
    data = doc.encode("utf-8")
    digest.update(len(data).to_bytes(8, "little") + data)
  train, val = _hold_out_characters(docs, val_fraction, source)
  identity = f"{source}|sha256={digest.hexdigest()}|holdout_chars={val_fraction!r}"
  return Corpus(Documents(lambda: iter(train), len(train)), Documents(lambda: iter(val), len(val)), identity)


def build_tokenizer(spec: str, corpus: Corpus, tokenizer_dir: str | os.PathLike | None = None
                    ) -> tokenizer_lib.Tokenizer:
  """The tokenizer named by `spec`, reloaded from `tokenizer_dir` when a previous run saved it there."""
  directory = paths.path(tokenizer_dir) if tokenizer_dir else None
  if directory and (directory / _SPEC_FILE).is_file():
    saved = json.loads((directory / _SPEC_FILE).read_text())["tokenizer"]
    if saved != spec:
      raise ValueError(f"{directory} holds a tokenizer built from {saved!r}, but {spec!r} was asked for: a "
                       f"resumed run must keep its tokenizer. Use a new workdir, or delete {directory}.")
    return tokenizer_lib.load_tokenizer(directory)
  if directory and directory.is_dir() and any(directory.iterdir()):
    # Checked before building, and never deleted: without our spec file these files are not ours.
    raise FileExistsError(f"{directory} is not empty but has no {_SPEC_FILE}, so gptjax did not save a "
                          f"tokenizer there: empty it or choose another tokenizer_dir.")
  if spec == "char":
    # Over train AND val text: a character tokenizer cannot encode a character it has not seen (it raises),
    # and the character set is all it learns, so nothing of the val text's content leaks.
    tokenizer = tokenizer_lib.char_tokenizer(itertools.chain(corpus.train, corpus.val))
  elif spec.startswith("bpe:"):
    try:
      vocab_size = int(spec[len("bpe:"):])
    except ValueError:
      raise ValueError(f"Tokenizer spec {spec!r}: expected bpe:<vocab size>, e.g. bpe:4096") from None
    tokenizer = tokenizer_lib.train_bpe(corpus.train, vocab_size)
  else:
    tokenizer = tokenizer_lib.load_tokenizer(spec)
  if directory:
    _save_tokenizer(tokenizer, spec, directory)
  return tokenizer


def _save_tokenizer(tokenizer: tokenizer_lib.Tokenizer, spec: str, directory) -> None:
  """Saves so that a run killed mid-save leaves no folder that looks complete (the spec file says complete)."""
  if paths.is_local(directory):
    # Into a fresh folder, then renamed into place; also replaces an empty folder (e.g. made by the trainer).
    staging = directory.with_name(f"{directory.name}.tmp-{uuid.uuid4().hex}")
    tokenizer.save(staging)
    (staging / _SPEC_FILE).write_text(json.dumps({"tokenizer": spec}) + "\n")
    os.replace(staging, directory)
    return
  with tempfile.TemporaryDirectory(prefix="gptjax-") as staging:  # A cloud folder: no renames; the spec file last.
    tokenizer.save(staging)
    (pathlib.Path(staging) / _SPEC_FILE).write_text(json.dumps({"tokenizer": spec}) + "\n")
    paths.upload_dir(staging, directory, last=_SPEC_FILE)


def check_vocab_size(tokenizer: tokenizer_lib.Tokenizer, model_vocab_size: int) -> None:
  """Raises if the tokenizer emits ids the model's embedding has no row for.

  A larger model vocabulary is fine (GPT-2 checkpoints are often padded 50257 -> 50304 for speed).
  """
  if tokenizer.vocab_size > model_vocab_size:
    raise ValueError(
        f"The {tokenizer.kind} tokenizer has vocab_size {tokenizer.vocab_size} but the model's vocab_size is "
        f"{model_vocab_size}: ids >= {model_vocab_size} would index past the embedding. Set the model's "
        f"vocab_size to at least {tokenizer.vocab_size}.")


def _read_utf8(path: str) -> str:
  data = pathlib.Path(path).read_bytes()  # An unreadable file raises an OSError that already names it.
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path} is not valid UTF-8 (byte {e.start}: {data[e.start:e.start + 4]!r}); convert it, "
                     f"e.g. `iconv -f cp1252 -t utf-8`.") from None


def _python_stdlib(max_bytes: int) -> list[str]:
  """The interpreter's standard-library sources, in sorted relative-path order, up to `max_bytes`."""
  root = sysconfig.get_paths()["stdlib"]
  paths = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = [d for d in subdirs if d not in _BUILTIN_SKIP]  # Pruned here: site-packages is huge.
    paths += [os.path.relpath(os.path.join(directory, f), root) for f in files if f.endswith(".py")]
  docs, total = [], 0
  for rel in sorted(p.replace(os.sep, "/") for p in paths):
    if total >= max_bytes:
      break
    data = pathlib.Path(root, rel).read_bytes()
    try:
      data.decode("utf-8")
    except UnicodeDecodeError:
      continue  # A user cannot fix the stdlib; skipping keeps the default source working everywhere.
    data = data[:max_bytes - total]  # The last file is cut to fit; 'ignore' drops a split multi-byte character.
    docs.append(data.decode("utf-8", errors="ignore"))
    total += len(data)
  logging.info("builtin:python: %d files, %d bytes of Python %s from %s.", len(docs), total,
               sys.version.split()[0], root)
  return docs


def _hold_out_characters(docs: list[str], val_fraction: float, source: str) -> tuple[list[str], list[str]]:
  """Splits the document stream at the character that leaves the last `val_fraction` of characters for val."""
  total = sum(map(len, docs))
  cut = total - max(1, int(total * val_fraction))
  if cut < 1:
    raise ValueError(f"The source {source!r} has only {total} characters: too few to hold out validation text.")
  for i, doc in enumerate(docs):
    if cut <= len(doc):
      train, val = docs[:i] + [doc[:cut]], [doc[cut:]] + docs[i + 1:]
      return [d for d in train if d], [d for d in val if d]
    cut -= len(doc)
  raise AssertionError("unreachable: cut < total")


def _fingerprint(tokenizer: tokenizer_lib.Tokenizer) -> str:
  """A hash of the tokenizer's saved files: two tokenizers with one fingerprint give the same ids."""
  digest = hashlib.sha256()
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer.save(tmp)
    for path in sorted(pathlib.Path(tmp).rglob("*")):
      if path.is_file():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
  return digest.hexdigest()


def _cache_complete(entry, dtype: np.dtype) -> bool:
  """True when meta.json exists and every split file has exactly the size it records (local or cloud entry)."""
  try:
    meta = json.loads((entry / "meta.json").read_text())
    return meta["dtype"] == dtype.name and all(
        paths.size(entry / f"{name}.bin") == count * dtype.itemsize for name, count in meta["num_tokens"].items())
  except (OSError, ValueError, KeyError):
    return False


def _tokenize_to_file(docs: Documents, tokenizer, path: pathlib.Path, dtype: np.dtype, name: str,
                      progress: bool, num_workers: int = 1) -> int:
  """Encodes `docs` (eos between documents) into `path` via a temp file; returns the token count."""
  eos = tokenizer.eos_id
  count = 0
  tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
  try:
    with open(tmp, "wb") as f, tqdm.tqdm(total=docs.count, unit="doc", desc=f"Tokenising {name}",
                                         disable=not progress) as bar:
      for chunk_size, encoded in _encode_chunks(docs, tokenizer, num_workers):
        pieces = []
        for ids in encoded:
          if eos is not None and (count or pieces):
            pieces.append([eos])
          pieces.append(ids)
        tokens = np.concatenate([np.asarray(p, dtype) for p in pieces])
        tokens.tofile(f)
        count += tokens.size
        bar.update(chunk_size)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return count  # May be 0 (e.g. whitespace-only text for GPT-1): TokenDataset.batch then says so, with numbers.


def _encode_chunks(docs: Documents, tokenizer, num_workers: int) -> Iterator[tuple[int, list[list[int]]]]:
  """(documents in the chunk, their ids) per chunk of `docs`, in order; encoded by worker processes when asked.

  Workers help where Python, not the tokenizer, is the bottleneck (a stream's JSON rows, the char tokenizer); at
  most two chunks per worker are in flight, so a stream of any length takes bounded memory.
  """
  if num_workers <= 1:
    for chunk in _chunks(docs):
      yield len(chunk), tokenizer.encode_batch(chunk)
    return
  # Spawned, not forked: the parent may hold jax's threads. Each worker loads the tokenizer from its saved files.
  context = multiprocessing.get_context("spawn")
  with tempfile.TemporaryDirectory() as saved:
    tokenizer.save(saved)
    with context.Pool(num_workers, _worker_init, (saved,)) as pool:
      yield from _in_order(pool, _chunks(docs), 2 * num_workers)


def _in_order(pool, chunks: Iterator[list[str]], max_in_flight: int) -> Iterator[tuple[int, list[list[int]]]]:
  """Submits chunks as results are taken, so at most `max_in_flight` are queued (Pool.imap reads ahead unbounded)."""
  in_flight = collections.deque()
  for chunk in chunks:
    in_flight.append((len(chunk), pool.apply_async(_worker_encode, (chunk,))))
    if len(in_flight) >= max_in_flight:
      size, result = in_flight.popleft()
      yield size, result.get()
  while in_flight:
    size, result = in_flight.popleft()
    yield size, result.get()


_WORKER_TOKENIZER = None


def _worker_init(saved: str) -> None:
  global _WORKER_TOKENIZER  # pylint: disable=global-statement
  os.environ["TOKENIZERS_PARALLELISM"] = "false"  # One thread per process: the processes are the parallelism.
  _WORKER_TOKENIZER = tokenizer_lib.load_tokenizer(saved)


def _worker_encode(chunk: list[str]) -> list[list[int]]:
  return _WORKER_TOKENIZER.encode_batch(chunk)


def _chunks(docs: Iterable[str], max_docs: int = 1024, max_chars: int = 4_000_000) -> Iterator[list[str]]:
  """Groups documents for encode_batch: big enough to use every core, small enough to bound memory."""
  chunk, chars = [], 0
  for doc in docs:
    chunk.append(doc)
    chars += len(doc)
    if len(chunk) >= max_docs or chars >= max_chars:
      yield chunk
      chunk, chars = [], 0
  if chunk:
    yield chunk
