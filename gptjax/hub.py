"""`lm.push_to_hub(repo_id)`: the model in Hugging Face layout, with a model card saying how it was trained.

The upload is `LanguageModel.save`'s folder (config.json, model.safetensors, tokenizer files: what
`transformers.AutoModelForCausalLM` and `gptjax.load` read) plus README.md, the model card. When the model was
loaded from a gptjax workdir (or one is named), the card states the run's config, data source and tokenizer, and its
final metrics from `metrics.jsonl`, and the run's `config.json` travels as `gptjax_config.json`.

Nothing is contacted before the upload itself, and a machine that cannot reach the Hub gets one RuntimeError that
says why (offline mode, or the endpoint that did not answer) instead of a retry loop or a stack of HTTP errors.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

from gptjax import paths

CONFIG_FILE = "config.json"  # gptjax.checkpoint.CONFIG_FILE: the run's config in its workdir.
METRICS_FILE = "metrics.jsonl"
_CARD_METRICS = ("train_loss", "val_loss", "val_ppl", "best_val_loss", "tokens_per_sec")


def training_record(workdir: str | os.PathLike | None) -> tuple[dict | None, dict | None]:
  """(the run's config, its last metrics line merged over earlier ones) from a workdir; None where unknown."""
  if workdir is None:
    return None, None
  workdir = paths.path(workdir)  # Local, or the cloud workdir `gptjax.load` read the model from.
  config = json.loads((workdir / CONFIG_FILE).read_text()) if (workdir / CONFIG_FILE).is_file() else None
  metrics = None
  if (workdir / METRICS_FILE).is_file():
    metrics = {}
    for line in (workdir / METRICS_FILE).read_text().splitlines():
      if line.strip():
        metrics.update(json.loads(line))  # Eval lines and train lines alternate: keep the latest of each.
  return config, metrics


def model_card(lm, repo_id: str, workdir: str | os.PathLike | None = None) -> str:
  """README.md for the Hub: front matter, the architecture, how it was trained (when known), how to load it.

  Args:
    lm: The `LanguageModel`.
    repo_id: The repository it is for (the card's title and loading example).
    workdir: The gptjax run folder it was trained in (default: the one `gptjax.load` read it from, if any).
  """
  c = lm.config
  config, metrics = training_record(workdir if workdir is not None else getattr(lm, "workdir", None))
  params = sum(int(x.size) for x in _leaves(lm.params))
  tokenizer = getattr(lm.tokenizer, "kind", None)
  lines = ["---", "library_name: gptjax", "tags:", "- gptjax", "- jax", "- flax", "- text-generation",
           "pipeline_tag: text-generation", "---", "", f"# {repo_id}", "",
           f"A GPT trained with gptjax (GPT-1/GPT-2 in JAX/Flax): {params:,} parameters, {c.num_layers} "
           f"layers, {c.num_heads} heads, width {c.emb_dim}, context {c.block_size} tokens, vocabulary "
           f"{c.vocab_size}, {c.norm}-LayerNorm, tokenizer {tokenizer or 'none'}.", "", "## Training", ""]
  if config is None:
    lines += ["Not recorded: this model was not pushed from a gptjax run folder (its config and metrics are "
              "unknown).", ""]
  else:
    data, train, opt = config.get("data", {}), config.get("train", {}), config.get("opt", {})
    lines += [f"- Data: `{data.get('source')}`, tokenizer `{data.get('tokenizer')}`, validation: "
              f"{data.get('val_fraction')} held out when the source has no validation split.",
              f"- Initialised from: `{config.get('init_from', 'scratch')}`.",
              f"- Steps: {train.get('steps')} of {train.get('batch_size')} sequences x "
              f"{train.get('seq_len') or config.get('model', {}).get('block_size')} tokens; AdamW lr "
              f"{opt.get('lr')} ({opt.get('warmup_steps')} warmup steps, cosine), weight decay "
              f"{opt.get('weight_decay')}.", ""]
    if metrics:
      lines += [f"Final metrics (step {metrics.get('step')}):", "", "| metric | value |", "|---|---|"]
      lines += [f"| {k} | {metrics[k]:.4g} |" for k in _CARD_METRICS if isinstance(metrics.get(k), (int, float))]
      lines += [""]
    lines += ["The run's full config is `gptjax_config.json`:", "", "```json", json.dumps(config, indent=2), "```",
              ""]
  lines += ["## Use", "", "```python", "import gptjax", "from huggingface_hub import snapshot_download", "",
            f"lm = gptjax.load(snapshot_download({repo_id!r}))",
            "print(lm.generate(['Hello'], max_new_tokens=20)[0])", "```", "",
            "The folder is also a Hugging Face one: `transformers.AutoModelForCausalLM.from_pretrained` loads it.",
            ""]
  return "\n".join(lines)


def push_to_hub(lm, repo_id: str, *, workdir: str | os.PathLike | None = None, private: bool = False,
                token: str | None = None, commit_message: str = "Upload gptjax model") -> str:
  """Uploads `lm` (HF layout + model card) to the Hub repository `repo_id`, creating it if needed.

  Args:
    lm: The `LanguageModel`.
    repo_id: `<user or org>/<name>`.
    workdir: The gptjax run folder it was trained in, for the card (default: the one it was loaded from, if any).
    private: Create the repository as private.
    token: A Hub token (default: the one `huggingface-cli login` stored, or $HF_TOKEN).
    commit_message: The commit's message.

  Returns:
    The URL of the commit.

  Raises:
    RuntimeError: the Hub cannot be reached (offline mode, or no answer from the endpoint), or refused the upload.
  """
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  if "/" not in repo_id:
    raise ValueError(f"repo_id {repo_id!r} must be <user or org>/<name>")
  if constants.HF_HUB_OFFLINE:
    raise RuntimeError(f"Cannot push {repo_id} to the Hugging Face Hub: offline mode is on (HF_HUB_OFFLINE=1). "
                       f"Unset it on a machine with network access, or save with lm.save(folder) and upload that.")
  workdir = workdir if workdir is not None else getattr(lm, "workdir", None)
  with tempfile.TemporaryDirectory() as tmp:
    folder = lm.save(pathlib.Path(tmp) / "model")
    (folder / "README.md").write_text(model_card(lm, repo_id, workdir))
    if workdir is not None and (paths.path(workdir) / CONFIG_FILE).is_file():
      (folder / "gptjax_config.json").write_bytes((paths.path(workdir) / CONFIG_FILE).read_bytes())
    api = huggingface_hub.HfApi(token=token)
    try:
      api.create_repo(repo_id, private=private, exist_ok=True)
      commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    except Exception as e:  # Connection errors differ between huggingface_hub versions (requests, then httpx).
      raise RuntimeError(f"Could not push {repo_id} to the Hugging Face Hub at {constants.ENDPOINT}: "
                         f"{type(e).__name__}: {e}. Check the network and your token (`huggingface-cli login`); "
                         f"lm.save(folder) writes the same files locally.") from e
  return getattr(commit, "commit_url", str(commit))


def _leaves(tree: Any):
  if isinstance(tree, dict):
    for value in tree.values():
      yield from _leaves(value)
  else:
    yield tree
