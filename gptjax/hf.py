"""GPT-1 / GPT-2 <-> Hugging Face: the config mapping and the parameter name table.

Our parameter names are HF GPT-2's, and HF's `Conv1D` weights are already laid out (in, out) like Flax kernels, so
conversion is renaming plus two reshapes (no transposes): `c_attn` (D, 3D) <-> (D, 3, H, K) and `attn.c_proj` (D, D)
<-> (H, K, D), which only split axes that are contiguous in HF's layout.

Folders written by `save_hf` load with `transformers.AutoModelForCausalLM.from_pretrained`; folders saved by
`GPT2LMHeadModel` / `OpenAIGPTLMHeadModel` (safetensors, sharded safetensors, or `pytorch_model.bin` when torch is
installed) load with `load_hf`.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Optional

import numpy as np

from gptjax import paths
from gptjax.model import ModelConfig

# HF model_type -> (our name for the architecture, HF class name, embedding names).
_ARCHS = {
    "gpt2": ("GPT2LMHeadModel", "wte", "wpe"),
    "openai-gpt": ("OpenAIGPTLMHeadModel", "tokens_embed", "positions_embed"),
}
# Buffers some HF checkpoints carry that are not parameters (causal-mask tables, position ids).
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "position_ids")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class CheckpointMismatchError(ValueError):
  """A checkpoint's parameters do not fit the configured model."""


def model_type(config: ModelConfig) -> str:
  """The HF architecture a config corresponds to: GPT-2 (pre-LN + ln_f) or GPT-1 (post-LN, no ln_f)."""
  if config.norm == "pre" and config.final_norm:
    return "gpt2"
  if config.norm == "post" and not config.final_norm:
    return "openai-gpt"
  raise ValueError(f"No Hugging Face architecture has norm={config.norm!r} with final_norm={config.final_norm}: "
                   "GPT-2 is norm='pre' with final_norm=True, GPT-1 is norm='post' with final_norm=False")


def config_from_hf(hf: dict[str, Any], **overrides) -> ModelConfig:
  """Maps an HF `config.json` dict (GPT-2 or OpenAI GPT) to a ModelConfig."""
  kind = hf.get("model_type")
  if kind not in _ARCHS:
    raise ValueError(f"Unsupported Hugging Face model_type {kind!r}; gptjax reads {sorted(_ARCHS)}")
  if kind == "gpt2":
    for key, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False)):
      if hf.get(key, ok) != ok:
        raise ValueError(f"GPT-2 config option {key}={hf[key]!r} is not supported (gptjax needs {ok})")
    if hf.get("add_cross_attention"):
      raise ValueError("GPT-2 config option add_cross_attention=True is not supported")
    width = hf["n_embd"]
    values = dict(
        vocab_size=hf["vocab_size"], block_size=hf["n_positions"], num_layers=hf["n_layer"],
        num_heads=hf["n_head"], emb_dim=width, mlp_dim=hf.get("n_inner") or 4 * width,
        dropout_rate=hf.get("resid_pdrop", 0.1), attention_dropout_rate=hf.get("attn_pdrop", 0.1),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5), norm="pre", final_norm=True,
        activation=hf.get("activation_function", "gelu_new"), init_std=hf.get("initializer_range", 0.02),
        tie_embeddings=hf.get("tie_word_embeddings", True), scale_residual_init=True)
  else:
    width = hf["n_embd"]
    afn = {"gelu": "gelu_new"}.get(hf.get("afn", "gelu"), hf.get("afn"))  # HF maps GPT-1's "gelu" to gelu_new.
    values = dict(
        vocab_size=hf["vocab_size"], block_size=hf["n_positions"], num_layers=hf["n_layer"],
        num_heads=hf["n_head"], emb_dim=width, mlp_dim=4 * width, dropout_rate=hf.get("resid_pdrop", 0.1),
        attention_dropout_rate=hf.get("attn_pdrop", 0.1), layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        norm="post", final_norm=False, activation=afn, init_std=hf.get("initializer_range", 0.02),
        tie_embeddings=hf.get("tie_word_embeddings", True), scale_residual_init=False)
  values.update(overrides)
  return ModelConfig(**values)


def config_to_hf(config: ModelConfig, *, eos_id: Optional[int] = None) -> dict[str, Any]:
  """The HF `config.json` dict for a ModelConfig."""
  kind = model_type(config)
  arch = _ARCHS[kind][0]
  common = dict(model_type=kind, architectures=[arch], vocab_size=config.vocab_size,
                n_positions=config.block_size, n_embd=config.emb_dim, n_layer=config.num_layers,
                n_head=config.num_heads, resid_pdrop=config.dropout_rate, embd_pdrop=config.dropout_rate,
                attn_pdrop=config.attention_dropout_rate, layer_norm_epsilon=config.layer_norm_epsilon,
                initializer_range=config.init_std, tie_word_embeddings=config.tie_embeddings)
  if kind == "gpt2":
    hf_activation = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}[config.activation]
    extra = dict(n_inner=config.mlp_dim, activation_function=hf_activation, scale_attn_weights=True,
                 use_cache=True)
    if eos_id is not None:
      extra.update(bos_token_id=eos_id, eos_token_id=eos_id)
  else:
    if config.mlp_dim != 4 * config.emb_dim:
      raise ValueError(f"OpenAI GPT in Hugging Face has mlp_dim = 4 * emb_dim = {4 * config.emb_dim}; "
                       f"this model has mlp_dim={config.mlp_dim}")
    hf_afn = {"gelu_new": "gelu", "relu": "relu", "silu": "silu"}.get(config.activation)
    if hf_afn is None:
      raise ValueError(f"OpenAI GPT in Hugging Face has no activation {config.activation!r}")
    extra = dict(afn=hf_afn)
  return {**common, **extra}


def _hf_layout(config: ModelConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """HF name (without the `transformer.` prefix) -> (our parameter path, HF shape)."""
  D, F, H, K = config.emb_dim, config.mlp_dim, config.num_heads, config.head_dim
  kind = model_type(config)
  _, wte, wpe = _ARCHS[kind]
  table = {f"{wte}.weight": (("wte", "embedding"), (config.vocab_size, D)),
           f"{wpe}.weight": (("wpe", "embedding"), (config.block_size, D))}
  for i in range(config.num_layers):
    for hf_name, path, shape in (
        ("ln_1.weight", ("ln_1", "scale"), (D,)), ("ln_1.bias", ("ln_1", "bias"), (D,)),
        ("attn.c_attn.weight", ("attn", "c_attn", "kernel"), (D, 3 * D)),
        ("attn.c_attn.bias", ("attn", "c_attn", "bias"), (3 * D,)),
        ("attn.c_proj.weight", ("attn", "c_proj", "kernel"), (D, D)),
        ("attn.c_proj.bias", ("attn", "c_proj", "bias"), (D,)),
        ("ln_2.weight", ("ln_2", "scale"), (D,)), ("ln_2.bias", ("ln_2", "bias"), (D,)),
        ("mlp.c_fc.weight", ("mlp", "c_fc", "kernel"), (D, F)), ("mlp.c_fc.bias", ("mlp", "c_fc", "bias"), (F,)),
        ("mlp.c_proj.weight", ("mlp", "c_proj", "kernel"), (F, D)),
        ("mlp.c_proj.bias", ("mlp", "c_proj", "bias"), (D,))):
      table[f"h.{i}.{hf_name}"] = ((f"h_{i}",) + path, shape)
  if config.final_norm:
    table["ln_f.weight"] = (("ln_f", "scale"), (D,))
    table["ln_f.bias"] = (("ln_f", "bias"), (D,))
  return table


def _to_ours(path: tuple[str, ...], array: np.ndarray, config: ModelConfig) -> np.ndarray:
  H, K, D = config.num_heads, config.head_dim, config.emb_dim
  if path[-2:] == ("c_attn", "kernel"):
    return array.reshape(D, 3, H, K)
  if path[-2:] == ("c_attn", "bias"):
    return array.reshape(3, H, K)
  if path[-3:] == ("attn", "c_proj", "kernel"):
    return array.reshape(H, K, D)
  return array


def _get(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def params_from_state_dict(state: dict[str, np.ndarray], config: ModelConfig) -> dict:
  """Converts an HF state dict (numpy arrays) to our parameter tree, checking every name and shape."""
  stripped = {}
  for name, value in state.items():
    key = name[len("transformer."):] if name.startswith("transformer.") else name
    stripped[key] = value
  table = _hf_layout(config)
  params: dict = {}
  for hf_name, (path, shape) in table.items():
    if hf_name not in stripped:
      raise CheckpointMismatchError(
          f"Parameter {hf_name!r} (expected shape {shape}) is missing from the checkpoint")
    array = np.asarray(stripped.pop(hf_name))
    if array.shape != shape:
      raise CheckpointMismatchError(
          f"Parameter {hf_name!r}: expected shape {shape} from the config, found {array.shape}")
    _set(params, path, _to_ours(path, array.astype(np.float32), config))
  head = stripped.pop("lm_head.weight", None)
  if not config.tie_embeddings:
    if head is None:
      raise CheckpointMismatchError("Parameter 'lm_head.weight' is missing and the config does not tie embeddings")
    expected = (config.vocab_size, config.emb_dim)
    if head.shape != expected:
      raise CheckpointMismatchError(f"Parameter 'lm_head.weight': expected shape {expected}, found {head.shape}")
    _set(params, ("lm_head", "kernel"), np.asarray(head, np.float32).T)
  leftover = sorted(k for k in stripped if not k.endswith(_IGNORED_SUFFIXES))
  if leftover:
    raise CheckpointMismatchError(f"Checkpoint has parameters this {model_type(config)} config does not: "
                                  f"{leftover[:8]}{' ...' if len(leftover) > 8 else ''}")
  return params


def params_to_state_dict(params: dict, config: ModelConfig) -> dict[str, np.ndarray]:
  """Our parameter tree -> an HF `*LMHeadModel` state dict (float32 numpy, HF layouts; no `lm_head` if tied)."""
  state = {}
  for hf_name, (path, shape) in _hf_layout(config).items():
    state[f"transformer.{hf_name}"] = np.ascontiguousarray(np.asarray(_get(params, path), np.float32).reshape(shape))
  if not config.tie_embeddings:  # A tied head is the embedding: HF re-ties it on load.
    state["lm_head.weight"] = np.ascontiguousarray(np.asarray(params["lm_head"]["kernel"], np.float32).T)
  return state


def read_state_dict(directory: os.PathLike) -> dict[str, np.ndarray]:
  """Reads the weights of an HF folder: safetensors (single or sharded), else `pytorch_model.bin` via torch."""
  directory = pathlib.Path(directory)
  single, index, torch_bin = (directory / name for name in _WEIGHT_FILES)
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  if single.exists():
    return load_file(single)
  if index.exists():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    state = {}
    for shard in shards:
      state.update(load_file(directory / shard))
    return state
  if torch_bin.exists():
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"{torch_bin} is a PyTorch pickle: reading it needs torch installed "
                        "(or convert the folder to safetensors)") from e
    state = torch.load(torch_bin, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}
  raise FileNotFoundError(f"No weights in {directory}: looked for {', '.join(_WEIGHT_FILES)}")


def load_hf(directory: os.PathLike) -> tuple[ModelConfig, dict]:
  """Loads (config, params) from a folder saved by `GPT2LMHeadModel` or `OpenAIGPTLMHeadModel`."""
  directory = pathlib.Path(directory)
  config_file = directory / "config.json"
  if not config_file.exists():
    raise FileNotFoundError(f"{directory} has no config.json: not a Hugging Face model folder")
  try:
    hf_config = json.loads(config_file.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{config_file} is not valid JSON: {e}") from e
  config = config_from_hf(hf_config)
  return config, params_from_state_dict(read_state_dict(directory), config)


def save_hf(directory: os.PathLike, config: ModelConfig, params: dict, *, eos_id: Optional[int] = None) -> None:
  """Writes `config.json` and `model.safetensors` that `transformers` loads as GPT2/OpenAIGPT LMHeadModel."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  state = params_to_state_dict(params, config)
  save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
  (directory / "config.json").write_text(json.dumps(config_to_hf(config, eos_id=eos_id), indent=2) + "\n")


def is_hf_folder(directory: os.PathLike) -> bool:
  directory = paths.path(directory)  # Also asked of cloud folders (gptjax.checkpoint.initial_weights).
  return (directory / "config.json").exists() and any((directory / n).exists() for n in _WEIGHT_FILES)


def download(name: str) -> pathlib.Path:
  """Fetches an HF hub model (config, weights, tokenizer files) into the local cache; clear error offline."""
  try:
    from huggingface_hub import snapshot_download  # pylint: disable=g-import-not-at-top
    path = snapshot_download(name, allow_patterns=[
        "config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
        "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"])
  except Exception as e:  # The hub client raises many types: offline, unknown repo, auth.
    raise FileNotFoundError(
        f"{name!r} is not a local folder, and fetching it from the Hugging Face hub failed "
        f"({type(e).__name__}: {e}). Pass a folder saved by save_pretrained, or go online.") from e
  return pathlib.Path(path)
