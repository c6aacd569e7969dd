r"""nanoGPT's own CPU command next to gptjax's run of the same shape and schedule: wall clock and validation loss.

  python experiments/bench_nanogpt.py --nanogpt=/path/to/a/nanoGPT/checkout     # both, one after the other
  python experiments/bench_nanogpt.py                                             # gptjax's side alone

nanoGPT's README trains on a CPU with
  python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1
      --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
      --dropout=0.0
This script runs exactly that in the checkout (only `--dataset` and `--out_dir` added, pointing into this run's
folder), and `python -m gptjax.train --config configs/shakespeare_char.py` with the same shape, batch, steps,
learning-rate schedule, AdamW settings, clipping, dropout, float32 and the same evaluation cadence (every 250 steps,
20 batches of 12). Both read one character-level corpus split the same way (nanoGPT's `prepare.py` rule: the first
90% of the characters train, the rest validates); this script writes nanoGPT's `train.bin` / `val.bin` / `meta.pkl`
itself, and gptjax reads the text file (`text:` source, `val_fraction` 0.1: the same cut, checked). Tiny Shakespeare
cannot be downloaded here, so the default corpus is this interpreter's standard-library `.py` sources (ASCII files
only, in sorted path order) cut to Tiny Shakespeare's length; `--text` takes any UTF-8 file.

Columns: wall clock of the whole command (interpreter start to exit: imports, data preparation, compilation,
training, evaluations, checkpoints), the median per-step time each tool logs, the validation loss each tool prints
at its last evaluation (nanoGPT: 20 random batches; gptjax: 20 fixed windows), and the loss of each final model over
the WHOLE validation split, computed here the same way for both (non-overlapping 64-character windows, every
position scored; nanoGPT's model read from its `ckpt.pt`, which it writes when its validation estimate improves:
the step is shown). The two start from different random weights, so the losses differ by noise too.

Differences that remain: nanoGPT's layers have no biases (its `bias=False` default) and gptjax's do (813,824 against
~800k parameters); gptjax splits the two cores into two XLA devices (its CPU default) where PyTorch runs one process
over both; nanoGPT prints every step (`--log_interval=1`), gptjax every 10.

Measured 2026-12-03 on the project's 2-core VM (Intel Xeon, AVX-512), nanoGPT at its last commit (3adf61e),
torch 2.13.0+cpu, jax 0.10.2, `python experiments/bench_nanogpt.py --nanogpt=<checkout>` (2:35 wall; load
average 1.7 right after):

  | run | wall s | ms/step (median of its log) | its last val loss | whole-split val loss (step) |
  | --- | --- | --- | --- | --- |
  | nanoGPT train.py (PyTorch) | 65.1 | 29.5 | 1.4265 | 1.4081 (2000) |
  | gptjax (JAX) | 81.2 | 33.2 | 1.4827 | 1.4047 (2000) |

So gptjax reaches the same validation loss (1.4047 against 1.4081 over the whole split; its own 20-window
estimate reads higher than nanoGPT's 20 random batches) but takes 1.25x nanoGPT's wall clock: its step is
slower here (33.2 against 29.5 ms; an earlier run of the same gptjax command logged 30-33 ms per step), and about 8 s go before the first
step (imports 2.6 s, initialisation 1.9 s, compiling the step 2.3 s) against nanoGPT's ~2.5 s, and ~0.5 s per
evaluation and checkpoint (orbax's save slices every replicated array per device) against ~0.3 s. The issue's
goal (faster than nanoGPT's own command at equal or better loss) is not met on this machine.
"""

import os
import pathlib
import pickle
import re
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

import numpy as np
from absl import app
from absl import flags
from absl import logging

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_SHAKESPEARE_CHARS = 1_115_394
NANOGPT_CPU_FLAGS = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
                     "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--lr_decay_iters={iters}",
                     "--max_iters={iters}", "--dropout=0.0"]

_NANOGPT = flags.DEFINE_string("nanogpt", "", "A nanoGPT checkout (with train.py, model.py, configurator.py); '' = "
                               "run gptjax's side alone.")
_TEXT = flags.DEFINE_string("text", "", "A UTF-8 text file for both; '' = the standard library's ASCII sources.")
_MAX_ITERS = flags.DEFINE_integer("max_iters", 2000, "Training steps (nanoGPT's --max_iters and --lr_decay_iters).")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where the corpus, runs and logs go; '' = a temporary folder.")


def stdlib_text(num_chars: int) -> str:
  """The interpreter's standard-library ASCII `.py` files (no tests, no site-packages), joined, cut to num_chars."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  skip = {"site-packages", "test", "tests", "idlelib", "__pycache__"}
  files = sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts[:-1]))
  parts, total = [], 0
  for path in files:
    data = path.read_bytes()
    if data.isascii():
      parts.append(data.decode())
      total += len(data)
    if total >= num_chars:
      break
  return "".join(parts)[:num_chars]


def same_split_text(text: str) -> str:
  """`text`, shortened by a character or two if needed, so that nanoGPT's cut (int(n * 0.9)) and gptjax's
  (n - int(n * 0.1)) fall on the same character."""
  for n in range(len(text), max(len(text) - 20, 1), -1):
    if int(n * 0.9) == n - int(n * 0.1):
      return text[:n]
  raise ValueError(f"no length near {len(text)} splits the same way for both")


def write_nanogpt_data(text: str, folder: pathlib.Path) -> None:
  """nanoGPT's character-level data files: sorted characters as ids, uint16 train.bin / val.bin, meta.pkl."""
  chars = sorted(set(text))
  stoi = {c: i for i, c in enumerate(chars)}
  cut = int(len(text) * 0.9)
  folder.mkdir(parents=True, exist_ok=True)
  for name, part in (("train", text[:cut]), ("val", text[cut:])):
    np.array([stoi[c] for c in part], np.uint16).tofile(folder / f"{name}.bin")
  with open(folder / "meta.pkl", "wb") as f:
    pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)


def timed(command, cwd, log_path) -> float:
  """Runs `command`, its output into `log_path`; returns its wall-clock seconds; raises with the log's tail."""
  started = time.perf_counter()
  with open(log_path, "w") as log:
    code = subprocess.call(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
  seconds = time.perf_counter() - started
  if code:
    tail = pathlib.Path(log_path).read_text()[-3000:]
    raise RuntimeError(f"{' '.join(map(str, command))} exited with {code}; the end of {log_path}:\n{tail}")
  return seconds


def windows(ids, length: int):
  """Non-overlapping [n, length] inputs and their next-token targets covering `ids`."""
  n = (len(ids) - 1) // length
  ids = np.asarray(ids[:n * length + 1])
  return (np.stack([ids[i * length:(i + 1) * length] for i in range(n)]),
          np.stack([ids[i * length + 1:(i + 1) * length + 1] for i in range(n)]))


def gptjax_full_val(workdir: pathlib.Path, val_text: str, length: int) -> float:
  import gptjax  # pylint: disable=g-import-not-at-top
  lm = gptjax.load(workdir)
  x, y = windows(lm.tokenizer.encode(val_text), length)
  total = 0.0
  for i in range(0, len(x), 64):
    logits = lm.logits(x[i:i + 64]).astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    total -= np.take_along_axis(logp, y[i:i + 64][..., None], -1).sum()
  return total / y.size


def nanogpt_full_val(checkout: pathlib.Path, out_dir: pathlib.Path, data_dir: pathlib.Path, val_text: str,
                     length: int) -> tuple[float, int]:
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(checkout))
  try:
    from model import GPT, GPTConfig  # nanoGPT's model.py, from the checkout.  pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(str(checkout))
  checkpoint = torch.load(out_dir / "ckpt.pt", map_location="cpu")
  model = GPT(GPTConfig(**checkpoint["model_args"]))
  model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in checkpoint["model"].items()})
  model.eval()
  with open(data_dir / "meta.pkl", "rb") as f:
    stoi = pickle.load(f)["stoi"]
  x, y = windows([stoi[c] for c in val_text], length)
  total = 0.0
  with torch.no_grad():
    for i in range(0, len(x), 64):
      _, loss = model(torch.as_tensor(x[i:i + 64]), torch.as_tensor(y[i:i + 64]))
      total += loss.item() * y[i:i + 64].size
  return total / y.size, int(checkpoint["iter_num"])


def last_float(pattern: str, log: str) -> float:
  found = re.findall(pattern, log)
  return float(found[-1]) if found else float("nan")


def median_float(pattern: str, log: str) -> float:
  found = [float(x) for x in re.findall(pattern, log)]
  return statistics.median(found) if found else float("nan")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # This process only loads and scores the two final models.
  iters = _MAX_ITERS.value
  if iters < 101:
    raise app.UsageError(f"--max_iters must be > 100 (both warm up for 100 steps), got {iters}")
  checkout = pathlib.Path(_NANOGPT.value).resolve() if _NANOGPT.value else None
  if checkout and not all((checkout / f).is_file() for f in ("train.py", "model.py", "configurator.py")):
    raise app.UsageError(f"--nanogpt={_NANOGPT.value}: not a nanoGPT checkout (no train.py, model.py and "
                         "configurator.py there)")
  folder = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="bench_nanogpt-"))
  folder.mkdir(parents=True, exist_ok=True)
  text = pathlib.Path(_TEXT.value).read_text("utf-8") if _TEXT.value else stdlib_text(TINY_SHAKESPEARE_CHARS)
  text = same_split_text(text)
  corpus = folder / "input.txt"
  corpus.write_text(text, "utf-8")
  val_text = text[int(len(text) * 0.9):]
  vocab = len(set(text))
  print(f"corpus: {'--text=' + _TEXT.value if _TEXT.value else 'standard-library ASCII sources'}, "
        f"{len(text):,} characters, {vocab} distinct; validation: the last {len(val_text):,}; {iters} steps; "
        f"folder {folder}", flush=True)
  rows = []

  if checkout:
    data_dir, out_dir = folder / "nanogpt_data", folder / "nanogpt_out"
    write_nanogpt_data(text, data_dir)
    command = [sys.executable, "train.py", "config/train_shakespeare_char.py",
               *[f.format(iters=iters) for f in NANOGPT_CPU_FLAGS], f"--dataset={data_dir}", f"--out_dir={out_dir}"]
    seconds = timed(command, checkout, folder / "nanogpt.log")
    log = (folder / "nanogpt.log").read_text()
    full, step = nanogpt_full_val(checkout, out_dir, data_dir, val_text, 64)
    rows.append(("nanoGPT train.py (PyTorch)", seconds, median_float(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", log),
                 last_float(r"val loss ([\d.]+)", log), full, step))
    print(f"nanoGPT done in {seconds:.1f} s", flush=True)

  workdir = folder / "gptjax"
  command = [sys.executable, "-m", "gptjax.train", "--config", "configs/shakespeare_char.py", f"--workdir={workdir}",
             f"--config.data.source=text:{corpus}", f"--config.data.cache_dir={folder / 'gptjax_tokens'}",
             f"--config.model.vocab_size={vocab}", "--config.model.block_size=64", "--config.model.num_layers=4",
             "--config.model.num_heads=4", "--config.model.emb_dim=128", "--config.model.mlp_dim=512",
             "--config.model.dropout_rate=0", "--config.model.attention_dropout_rate=0",
             "--config.model.dtype=float32", "--config.train.batch_size=12", f"--config.train.steps={iters}",
             "--config.train.eval_every=250", "--config.eval.batch_size=12", "--config.eval.num_batches=20"]
  seconds = timed(command, ROOT, folder / "gptjax.log")
  log = (folder / "gptjax.log").read_text()
  rows.append(("gptjax (JAX)", seconds, median_float(r"([\d.]+) ms/step", log), last_float(r"val_loss ([\d.]+)", log),
               gptjax_full_val(workdir, val_text, 64), iters))
  print(f"gptjax done in {seconds:.1f} s\n", flush=True)

  print("| run | wall s | ms/step (median of its log) | its last val loss | whole-split val loss (step) |")
  print("| --- | --- | --- | --- | --- |")
  for name, wall, step_ms, own_val, full, step in rows:
    print(f"| {name} | {wall:.1f} | {step_ms:.1f} | {own_val:.4f} | {full:.4f} ({step}) |")
  if len(rows) == 2:
    print(f"\ngptjax / nanoGPT wall clock: {rows[1][1] / rows[0][1]:.2f}x; whole-split val loss "
          f"{rows[1][4]:.4f} vs {rows[0][4]:.4f}")
  load = os.getloadavg()
  print(f"load average after: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")


if __name__ == "__main__":
  app.run(main)
