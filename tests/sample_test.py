"""`python -m gptjax.sample`, run as a real subprocess on a tiny saved Hugging Face folder with tokenizer files.

What it checks is the command line: its flags reach `LanguageModel.generate` (the expected text is that call's,
the same code path), its output layout, and its error path, the beam flags' refusals (gptjax/decoding_flags.py)
among them. The decoding itself is checked against Hugging Face
`generate` in sampling_test.py (greedy, top-k / top-p, penalties) and beam_test.py.
"""

import os
import pathlib
import subprocess
import sys

from gptjax.tokenizer import train_bpe
from tests.tiny_lm import CORPUS, text_lm


def test_sample_command_prints_the_samples(tmp_path):
  lm = text_lm(train_bpe(CORPUS, 300))
  lm.save(tmp_path / "model")
  (tmp_path / "prompt.txt").write_text("Hello 日本", encoding="utf-8")
  env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1]), "JAX_PLATFORMS": "cpu",
         "PYTHONIOENCODING": "utf-8"}
  command = [sys.executable, "-m", "gptjax.sample", f"--model={tmp_path / 'model'}",
             f"--start=FILE:{tmp_path / 'prompt.txt'}", "--num_samples=4", "--max_new_tokens=12", "--temperature=1.5",
             "--top_k=50", "--seed=3"]
  out = subprocess.run(command, capture_output=True, text=True, env=env, encoding="utf-8", timeout=300)
  assert out.returncode == 0, out.stderr
  samples = lm.generate(["Hello 日本"], 12, temperature=1.5, top_k=50, seed=3, num_samples=4)
  assert out.stdout == "".join(f"Hello 日本{s}\n{'-' * 40}\n" for s in samples)
  bad = subprocess.run(command[:4] + ["--top_p=2"], capture_output=True, text=True, env=env, timeout=300)
  assert bad.returncode == 2  # A user's mistake (gptjax.console): one line, exit status 2.
  assert bad.stderr.strip().splitlines() == ["error: top_p must be in (0, 1] (1 = off), got 2.0"]


def test_sample_command_beam_search_and_flags_that_do_not_go_together(tmp_path):
  lm = text_lm(train_bpe(CORPUS, 300))
  lm.save(tmp_path / "model")
  env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1]), "JAX_PLATFORMS": "cpu",
         "PYTHONIOENCODING": "utf-8"}
  command = [sys.executable, "-m", "gptjax.sample", f"--model={tmp_path / 'model'}", "--start=Hello",
             "--max_new_tokens=12"]
  beams = ["--num_beams=4", "--num_return_sequences=2", "--length_penalty=0.5", "--no_repeat_ngram_size=2",
           "--min_new_tokens=3", "--early_stopping=true"]
  out = subprocess.run(command + beams, capture_output=True, env=env)  # Bytes: a sample may hold a '\r'.
  assert out.returncode == 0, out.stderr.decode()
  expected = lm.generate(["Hello"], 12, num_beams=4, num_return_sequences=2, length_penalty=0.5,
                         no_repeat_ngram_size=2, min_new_tokens=3, early_stopping=True)
  assert len(expected) == 2
  assert out.stdout.decode("utf-8") == "".join(f"Hello{s}\n{'-' * 40}\n" for s in expected)
  for extra, message in [
      (["--num_beams=4", "--temperature=0.7"], "error: --temperature chooses tokens by sampling, but --num_beams=4"),
      (["--num_beams=4", "--num_samples=3"], "error: --num_samples=3 draws samples; with --num_beams=4"),
      (["--length_penalty=2"], "error: --length_penalty applies to beam search only"),
      (["--no_repeat_ngram_size=2", "--repetition_penalty=1.3"], "error: --repetition_penalty=1.3 is not"),
      (["--num_beams=2", "--num_return_sequences=3"], "error: num_return_sequences=3 must be <= num_beams=2")]:
    bad = subprocess.run(command + extra, capture_output=True, text=True, env=env)
    assert bad.returncode == 2, (extra, bad.stderr)
    (line,) = bad.stderr.strip().splitlines()
    assert line.startswith(message), (extra, line)
