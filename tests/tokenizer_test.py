"""Tests for gptjax.tokenizer against the real GPT-2 vocabulary and transformers' tokenizers."""

import json
import random
import shutil

import numpy as np
import pytest
import tokenizers
import transformers
from tokenizers import models, normalizers, pre_tokenizers, trainers

from gptjax.tokenizer import char_tokenizer, load_tokenizer, train_bpe
from tests import assets

EOS = "<|endoftext|>"

# Strings where tokenizers disagree when a detail is wrong: Unicode, emoji and ZWJ sequences, whitespace runs,
# special-token text, contractions, digits and punctuation.
HARD_STRINGS = [
    "Hello world",
    "",
    " ",
    "   leading and trailing whitespace   ",
    "\n",
    "\n\n\nthree newlines then text\n\n",
    "tabs\tand\t\tdouble tabs\t",
    "runs    of     spaces  \n   and newline",
    "windows\r\nline ends\r\n",
    "Café naïve résumé Ångström façade",
    "日本語のテキストと中文字符",
    "مرحبا بالعالم",
    "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flag 🏳️‍🌈 end",
    EOS,
    f"before{EOS}after",
    f"a {EOS} b\n{EOS}{EOS}  ",
    "<|endoftext",
    "don't I'll we've she's they're I'm he'd DON'T",
    "3.14159 1,000,000 2024-01-01 $5.99 100% #1 @user",
    "!!! ??? ... --- ((())) [x] {y} <z> \\path/to",
    "\u00a0non-breaking\u200bzero-width e\u0301 combining",
    "\x00 control \x7f characters \x1b[0m",
    "x" * 300,
]

# ----- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_dir():
  return assets.gpt2_vocab_dir()


@pytest.fixture(scope="module")
def gpt2(gpt2_dir):
  return load_tokenizer(gpt2_dir)


@pytest.fixture(scope="module")
def gpt1_dir(tmp_path_factory):
  """A small GPT-1-style vocabulary (lower-cased, BERT word splitting, `</w>` word ends) as vocab.json + merges.txt,
  trained with the same `tokenizers` components transformers' OpenAIGPTConverter uses."""
  backend = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
  backend.normalizer = normalizers.BertNormalizer(lowercase=True)
  backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  trainer = trainers.BpeTrainer(vocab_size=400,
                                special_tokens=["<unk>"],
                                end_of_word_suffix="</w>",
                                show_progress=False)
  backend.train_from_iterator(_corpus(300), trainer)
  directory = tmp_path_factory.mktemp("gpt1")
  backend.model.save(str(directory))
  return directory


GPT1_STRINGS = [
    "Hello, World!",
    "the QUICK brown fox... jumped over the lazy dog's back.",
    "Numbers 12 and 345, (parentheses) and \"quotes\"",
    "Accents: café, naïve; newlines\n\nand   spaces",
    "unknown ж and 日本 ß",
    "",
]


def _corpus(n: int, seed: int = 0) -> list[str]:
  words = ("the quick brown fox, jumps over lazy dog; hello world! don't it's 42 3.14 café ünïcödé 日本 😀".split())
  rng = random.Random(seed)
  return [
      " ".join(rng.choice(words)
               for _ in range(rng.randint(3, 12))) + rng.choice([".", "!", "\n", ""])
      for _ in range(n)
  ]


def _hf(directory):
  return transformers.AutoTokenizer.from_pretrained(str(directory))


# ----- GPT-2 ------------------------------------------------------------------------------------------------------


def test_gpt2_known_ids(gpt2):
  assert gpt2.kind == "gpt2"
  assert gpt2.encode("Hello world") == [15496, 995]
  assert gpt2.encode(" Hello world") == [18435, 995]
  assert gpt2.eos_id == 50256
  assert gpt2.vocab_size == 50257
  assert gpt2.token_to_id("Ġworld") == 995 and gpt2.id_to_token(995) == "Ġworld"
  assert gpt2.token_to_id("not-a-token-anywhere") is None


def test_gpt2_matches_transformers(gpt2, gpt2_dir):
  hf_fast = transformers.GPT2TokenizerFast.from_pretrained(str(gpt2_dir))
  # Positional file paths: transformers 4 calls them vocab_file/merges_file, 5 calls them vocab/merges.
  hf = transformers.GPT2Tokenizer(str(gpt2_dir / "vocab.json"), str(gpt2_dir / "merges.txt"))
  for text in HARD_STRINGS:
    ids = gpt2.encode(text)
    assert ids == hf_fast.encode(text), text
    assert ids == hf.encode(text), text
    assert gpt2.decode(ids) == text
    assert gpt2.decode(ids) == hf_fast.decode(ids, clean_up_tokenization_spaces=False)
  assert gpt2.encode(f"a{EOS}b") == [64, 50256, 65]


def test_encode_batch_and_decode_inputs(gpt2):
  assert gpt2.encode_batch(HARD_STRINGS) == [gpt2.encode(t) for t in HARD_STRINGS]
  ids = gpt2.encode("Hello world")
  assert gpt2.decode(np.array(ids, np.int32)) == "Hello world"
  assert gpt2.decode([]) == ""
  assert gpt2.decode_batch(np.array([ids, ids])) == ["Hello world"] * 2


def test_gpt2_save_loads_in_transformers_and_back(gpt2, tmp_path):
  gpt2.save(tmp_path)
  assert {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
          "gptjax_tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}
  restored = load_tokenizer(tmp_path)
  assert (restored.kind, restored.vocab_size, restored.eos_id) == ("gpt2", 50257, 50256)
  assert restored.backend.to_str() == gpt2.backend.to_str()
  hf_auto = _hf(tmp_path)
  assert hf_auto.eos_token_id == 50256
  # The original-format pair alone (no tokenizer.json) must give the same tokenizer, to us and to transformers.
  pair = tmp_path / "pair"
  pair.mkdir()
  for name in ("vocab.json", "merges.txt"):
    shutil.copy(tmp_path / name, pair / name)
  from_pair = load_tokenizer(pair)
  hf_pair = transformers.GPT2Tokenizer(str(pair / "vocab.json"), str(pair / "merges.txt"))
  assert from_pair.kind == "gpt2"
  for text in HARD_STRINGS:
    ids = gpt2.encode(text)
    assert restored.encode(text) == hf_auto.encode(text) == from_pair.encode(text) == hf_pair.encode(text) == ids


def test_load_tokenizer_json_file_directly(gpt2, tmp_path):
  gpt2.save(tmp_path)
  direct = load_tokenizer(tmp_path / "tokenizer.json")
  assert direct.kind == "gpt2" and direct.encode("Hello world") == [15496, 995]


def test_add_special_tokens_grows_vocab_and_round_trips(gpt2_dir, tmp_path):
  gpt2 = load_tokenizer(gpt2_dir)  # Its own copy: adding tokens mutates it.
  ids = gpt2.add_special_tokens(["_start_", "_delimiter_", "_classify_"])
  assert ids == [50257, 50258, 50259]
  assert gpt2.vocab_size == 50260
  assert gpt2.add_special_tokens(["_delimiter_", EOS]) == [50258, 50256]
  assert gpt2.vocab_size == 50260
  text = "_start_Story here_delimiter_ the end_classify_"
  encoded = gpt2.encode(text)
  assert encoded[0] == 50257 and 50258 in encoded and encoded[-1] == 50259
  assert gpt2.decode(encoded) == text
  gpt2.save(tmp_path)
  restored = load_tokenizer(tmp_path)
  assert restored.vocab_size == 50260
  assert restored.encode(text) == encoded
  assert restored.token_to_id("_classify_") == 50259
  hf_auto = _hf(tmp_path)
  assert hf_auto.encode(text) == encoded and len(hf_auto) == 50260
  # transformers knows them as special tokens (tokenizer_config.json), not just as atomic ones.
  assert hf_auto.decode(encoded, skip_special_tokens=True) == "Story here the end"


# ----- GPT-1 ------------------------------------------------------------------------------------------------------


def test_gpt1_matches_transformers(gpt1_dir):
  ours = load_tokenizer(gpt1_dir)
  assert ours.kind == "gpt1" and ours.eos_id is None
  hf_fast = transformers.OpenAIGPTTokenizerFast.from_pretrained(str(gpt1_dir))
  hf = transformers.OpenAIGPTTokenizer(str(gpt1_dir / "vocab.json"), str(gpt1_dir / "merges.txt"))
  assert ours.vocab_size == len(hf_fast)
  for text in GPT1_STRINGS:
    ids = ours.encode(text)
    assert ids == hf_fast.encode(text) == hf.encode(text), text
  assert ours.id_to_token(ours.encode("hello")[-1]).endswith("</w>")
  assert ours.encode("HELLO World") == ours.encode("hello world")
  # Decoding joins words with spaces: lower-cased, punctuation split off (GPT-1 is lossy by design).
  assert ours.decode(ours.encode("Hello, World!")) == "hello , world !"
  assert ours.decode(ours.encode("unknown ж")) == "unknown <unk>"  # 'ж' is not in the training corpus.


def test_gpt1_special_tokens_save_load(gpt1_dir, tmp_path):
  gpt1 = load_tokenizer(gpt1_dir)
  size = gpt1.vocab_size
  start, delimiter, classify = gpt1.add_special_tokens(["_start_", "_delimiter_", "_classify_"])
  assert (start, delimiter, classify) == (size, size + 1, size + 2) and gpt1.vocab_size == size + 3
  text = "_start_The Fox jumps._delimiter_The dog_classify_"
  ids = gpt1.encode(text)
  assert ids[0] == start and delimiter in ids and ids[-1] == classify
  gpt1.save(tmp_path)
  restored = load_tokenizer(tmp_path)
  assert (restored.kind, restored.vocab_size) == ("gpt1", size + 3)
  assert restored.encode(text) == ids
  assert _hf(tmp_path).encode(text) == ids
  for plain in GPT1_STRINGS:
    assert _hf(tmp_path).encode(plain) == gpt1.encode(plain)


# ----- trained byte-level BPE -------------------------------------------------------------------------------------


def test_train_bpe_round_trip_and_save_load(tmp_path):
  trained = train_bpe(_corpus(500), vocab_size=400)
  assert trained.kind == "bpe"
  assert 257 < trained.vocab_size <= 400
  assert trained.eos_id is not None and trained.id_to_token(trained.eos_id) == EOS
  # Any text encodes and decodes exactly, even characters never seen in training: the 256 bytes are the alphabet.
  for text in HARD_STRINGS + _corpus(5, seed=1):
    assert trained.decode(trained.encode(text)) == text, text
  assert trained.encode(f"fox{EOS}dog").count(trained.eos_id) == 1
  # Training learned merges: common words are fewer tokens than bytes.
  assert len(trained.encode(" the quick brown fox")) < len(" the quick brown fox")
  trained.save(tmp_path)
  restored = load_tokenizer(tmp_path)
  assert (restored.kind, restored.vocab_size, restored.eos_id) == ("bpe", trained.vocab_size, trained.eos_id)
  hf_auto = _hf(tmp_path)
  for text in HARD_STRINGS:
    assert restored.encode(text) == trained.encode(text) == hf_auto.encode(text), text


def test_train_bpe_accepts_a_generator_and_rejects_tiny_vocab():
  assert train_bpe((t for t in _corpus(50)), vocab_size=300).vocab_size <= 300
  with pytest.raises(ValueError, match="257"):
    train_bpe(_corpus(10), vocab_size=256)


# ----- characters -------------------------------------------------------------------------------------------------


def test_char_tokenizer_round_trip_save_load(tmp_path):
  text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\tAll: Speak, speak! 😀 é"
  chars = char_tokenizer(text)
  assert chars.kind == "char" and chars.eos_id is None
  assert chars.vocab_size == len(set(text))
  assert [chars.id_to_token(i) for i in range(chars.vocab_size)] == sorted(set(text))
  ids = chars.encode(text)
  assert len(ids) == len(text) and chars.decode(ids) == text
  assert char_tokenizer(["ab", "ba\n"]).encode("\nab") == [0, 1, 2]
  chars.save(tmp_path)
  restored = load_tokenizer(tmp_path)
  assert (restored.kind, restored.vocab_size) == ("char", chars.vocab_size)
  assert restored.encode(text) == ids
  assert _hf(tmp_path).encode(text) == ids


def test_char_tokenizer_unknown_character_is_an_error():
  chars = char_tokenizer("hello world")
  with pytest.raises(ValueError, match="'X'"):
    chars.encode("hello X")
  with pytest.raises(ValueError, match="'!'"):
    chars.encode_batch(["hello", "world!"])
  eos = chars.add_special_tokens([EOS])[0]
  assert chars.eos_id == eos == chars.vocab_size - 1
  assert chars.encode(f"he{EOS}lo")[2] == eos


# ----- kind inference, for folders written by other tools --------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt2", "gpt1", "bpe", "char"])
def test_kind_inferred_without_marker(kind, gpt2, gpt1_dir, tmp_path):
  made = {
      "gpt2": lambda: gpt2,
      "gpt1": lambda: load_tokenizer(gpt1_dir),
      "bpe": lambda: train_bpe(_corpus(100), 300),
      "char": lambda: char_tokenizer("abc")
  }[kind]()
  made.save(tmp_path)
  (tmp_path / "gptjax_tokenizer.json").unlink()
  assert load_tokenizer(tmp_path).kind == kind


# ----- errors -----------------------------------------------------------------------------------------------------


def test_bad_inputs(gpt2):
  with pytest.raises(ValueError, match=r"50257.*vocab_size=50257"):
    gpt2.decode([15496, 50257])
  with pytest.raises(ValueError, match="-1"):
    gpt2.decode([-1])
  with pytest.raises(ValueError, match="1-D"):
    gpt2.decode([[1, 2]])
  with pytest.raises(ValueError, match="50300"):
    gpt2.id_to_token(50300)
  with pytest.raises(TypeError):
    gpt2.encode(b"bytes")
  with pytest.raises(TypeError):
    gpt2.encode(None)
  with pytest.raises(TypeError):
    gpt2.encode_batch("a str, not a list")
  with pytest.raises(TypeError):
    gpt2.add_special_tokens("_start_")


def test_load_errors(gpt2_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_tokenizer(tmp_path / "missing")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=r"tokenizer\.json.*vocab\.json.*merges\.txt"):
    load_tokenizer(empty)
  only_vocab = tmp_path / "only_vocab"
  only_vocab.mkdir()
  shutil.copy(gpt2_dir / "vocab.json", only_vocab)
  with pytest.raises(FileNotFoundError, match=r"merges\.txt"):
    load_tokenizer(only_vocab)
  (only_vocab / "vocab.json").write_text('{"a": 0,')
  (only_vocab / "merges.txt").write_text("#version: 0.2\n")
  with pytest.raises(ValueError, match=r"vocab\.json"):
    load_tokenizer(only_vocab)
  corrupt = tmp_path / "corrupt"
  corrupt.mkdir()
  (corrupt / "tokenizer.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"tokenizer\.json"):
    load_tokenizer(corrupt)


def test_marker_disagreeing_with_tokenizer_is_an_error(tmp_path):
  char_tokenizer("abc").save(tmp_path)
  (tmp_path / "gptjax_tokenizer.json").write_text(json.dumps({"kind": "char", "vocab_size": 50257}))
  with pytest.raises(ValueError, match="50257"):
    load_tokenizer(tmp_path)


def test_hub_name_offline_is_a_clear_error():
  # conftest.py sets HF_HUB_OFFLINE=1; a repository no cache can hold keeps this independent of the machine.
  with pytest.raises(OSError, match="not a local folder.*Hugging Face Hub"):
    load_tokenizer("gptjax-tests/no-such-tokenizer")
