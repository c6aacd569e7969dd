"""GPT-1 and GPT-2 as one Flax Linen model.

GPT-2 is `norm='pre'` with a final LayerNorm; GPT-1 is `norm='post'` without one. Everything else (attention,
MLP, tied embeddings) is shared, and parameter names mirror Hugging Face's GPT-2 (`wte`, `wpe`, `h_{i}/attn/c_attn`,
`ln_f`, ...) so that `gptjax/hf.py` is a name table.

Axis legend used in names and docstrings:
  B batch, L length (queries), S length (keys, cache slots), D model width (`emb_dim`), F MLP width (`mlp_dim`),
  H heads, K head dimension, V vocabulary.

Logical axis names on parameters (mapped to the mesh in `gptjax/sharding.py`):
  'vocab', 'embed', 'mlp', 'heads', 'kv', 'qkv', 'norm', 'position'.

Decoding (`ModelConfig.decode=True`) keeps keys, values and a validity mask per cache position in a `'cache'`
collection sized to a static maximum length. One call may feed many tokens (a whole prompt: prefill) or one; rows of a
ragged batch are left-padded and marked by `attention_mask`, and each row's positions count only its real tokens.
Every row has its own write index and position count, so the rows of the cache are independent slots: the inference
engine (`gptjax/inference/engine.py`) fills one slot with a new request while the others keep decoding.

Probing (read by `gptjax/inference/engine.py`): with `mutable=['hidden_states']` the residual stream is sown after
the embeddings and after every block (before `ln_f`); with `mutable=['intermediates']` each layer's attention
probabilities; `ablation=` zeroes chosen heads, attention sub-blocks or MLPs (see `ablation_masks`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax import dots

_NORMS = ("pre", "post")
_ACTIVATIONS = {
    # GPT-1 and GPT-2 both use the tanh approximation (HF's "gelu_new"; GPT-1's config says "gelu" for it).
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}
_DTYPES = ("float32", "bfloat16", "float16")
_ATTENTION_IMPLS = (None, "einsum", "xla", "cudnn")
_VOCAB_MAJOR_ROWS = 64  # On CPUs, `last_only` logits of 2..64 rows (decode steps, small prefills) are vocab-major.


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a GPT. Modes are derived with `dataclasses.replace` (e.g. `decode=True`).

  Attributes:
    vocab_size: Rows of the token embedding (V). GPT-2 50257, GPT-1 40478.
    block_size: Context length: rows of the position embedding. GPT-2 1024, GPT-1 512.
    num_layers: Transformer blocks.
    num_heads: Attention heads (H); must divide `emb_dim`.
    emb_dim: Model width (D).
    mlp_dim: MLP hidden width (F), 4 * D in both papers.
    dropout_rate: Dropout on embeddings and residual branches (HF `embd_pdrop` / `resid_pdrop`).
    attention_dropout_rate: Dropout on attention probabilities (HF `attn_pdrop`).
    layer_norm_epsilon: LayerNorm epsilon.
    norm: 'pre' (GPT-2: LayerNorm before each sub-block) or 'post' (GPT-1: after each residual sum).
    final_norm: Whether a LayerNorm `ln_f` follows the last block (GPT-2 yes, GPT-1 no).
    tie_embeddings: Output projection is the transposed token embedding (both papers); else an `lm_head` matrix.
    activation: MLP non-linearity: 'gelu_new' (tanh approximation, both papers), 'gelu', 'relu' or 'silu'.
    scale_residual_init: GPT-2's init: residual projections drawn with std 0.02 / sqrt(2 * num_layers).
    init_std: Standard deviation of the normal initialiser (0.02 in both papers).
    dtype: Compute dtype for matmuls ('float32' or 'bfloat16'); softmax, LayerNorm and logits stay float32.
    param_dtype: Storage dtype of parameters.
    attention_impl: 'einsum' (our own masked softmax), or passed to `jax.nn.dot_product_attention` ('xla',
      'cudnn'); None chooses: 'einsum' on CPUs, `jax.nn.dot_product_attention`'s own choice elsewhere.
    remat: Rematerialise each block in the backward pass (saves activation memory).
    decode: Decoding mode: a `'cache'` collection holds past keys and values.
    kv_cache_dtype: 'auto' (the compute dtype) or 'int8': cached keys and values stored as int8 with one absmax
      scale per (position, head), dequantized when read (gptjax/inference/quantize.py).
    weight_left: The layers compute `x W` as `(W^T x^T)^T` (gptjax/dots.py): faster on a CPU for few rows when the
      kernels are stored the other way round, as the engine's decode programs keep them; not for training.
  """

  vocab_size: int = 50257
  block_size: int = 1024
  num_layers: int = 12
  num_heads: int = 12
  emb_dim: int = 768
  mlp_dim: int = 3072
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-5
  norm: str = "pre"
  final_norm: bool = True
  tie_embeddings: bool = True
  activation: str = "gelu_new"
  scale_residual_init: bool = True
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: Optional[str] = None
  remat: bool = False
  decode: bool = False
  kv_cache_dtype: str = "auto"
  weight_left: bool = False

  def __post_init__(self):
    positive = ("vocab_size", "block_size", "num_layers", "num_heads", "emb_dim", "mlp_dim")
    for name in positive:
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
    if self.emb_dim % self.num_heads:
      raise ValueError(
          f"ModelConfig.emb_dim={self.emb_dim} must be divisible by num_heads={self.num_heads}")
    if self.norm not in _NORMS:
      raise ValueError(f"ModelConfig.norm must be one of {_NORMS}, got {self.norm!r}")
    if self.activation not in _ACTIVATIONS:
      raise ValueError(
          f"ModelConfig.activation must be one of {tuple(_ACTIVATIONS)}, got {self.activation!r}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"ModelConfig.{name} must be one of {_DTYPES}, got {getattr(self, name)!r}")
    if self.attention_impl not in _ATTENTION_IMPLS:
      raise ValueError(f"ModelConfig.attention_impl must be one of {_ATTENTION_IMPLS}, got {self.attention_impl!r}")
    if self.kv_cache_dtype not in ("auto", "int8"):
      raise ValueError(f"ModelConfig.kv_cache_dtype must be 'auto' or 'int8', got {self.kv_cache_dtype!r}")
    for name in ("dropout_rate", "attention_dropout_rate"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"ModelConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")

  @property
  def head_dim(self) -> int:
    return self.emb_dim // self.num_heads

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
    """Builds a config from a mapping (e.g. `config.model` of an ml_collections config), rejecting unknown keys."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"Unknown ModelConfig field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**dict(values))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def gpt2_config(size: str = "small", **overrides) -> ModelConfig:
  """The four GPT-2 sizes of the paper (Table 2), as released: small 124M, medium 355M, large 774M, xl 1.5B."""
  shapes = {"small": (12, 12, 768), "medium": (24, 16, 1024), "large": (36, 20, 1280), "xl": (48, 25, 1600)}
  if size not in shapes:
    raise ValueError(f"Unknown GPT-2 size {size!r}; expected one of {sorted(shapes)}")
  layers, heads, width = shapes[size]
  base = dict(num_layers=layers, num_heads=heads, emb_dim=width, mlp_dim=4 * width)
  return ModelConfig(**{**base, **overrides})


def gpt1_config(**overrides) -> ModelConfig:
  """GPT-1 (Radford et al. 2018): 12 post-LN layers, 768 wide, 512 context, 40478-token BPE, no final LayerNorm."""
  base = dict(vocab_size=40478, block_size=512, num_layers=12, num_heads=12, emb_dim=768, mlp_dim=3072,
              norm="post", final_norm=False, scale_residual_init=False)
  return ModelConfig(**{**base, **overrides})


# `rules=()`: the boxes only record axis names (read by gptjax/sharding.py) and never constrain on unbox. With the
# default, flax's DenseGeneral unboxes its flat 2-D kernel under the 4-D names inside `scope.param`'s shape check,
# which fails whenever logical axis rules and a mesh are in scope (as in the trainer's jitted steps).
def _normal(std: float, names: tuple[Optional[str], ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), names, rules=())


def _zeros(names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names, rules=())


def _ones(names):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), names, rules=())


def layer_norm(config: ModelConfig, name: str) -> nn.LayerNorm:
  """A LayerNorm that computes in float32 whatever the compute dtype (bf16 statistics lose precision).

  Its output is float32: callers cast back to the compute dtype.
  """
  return nn.LayerNorm(epsilon=config.layer_norm_epsilon, dtype=jnp.float32,
                      param_dtype=jnp.dtype(config.param_dtype), scale_init=_ones(("norm",)),
                      bias_init=_zeros(("norm",)), name=name)


def _einsum_attention(impl: Optional[str]) -> bool:
  """Whether attention runs our own masked softmax rather than `jax.nn.dot_product_attention`.

  'einsum' always; None (auto) on CPUs, where it is the faster of the two (see `CausalSelfAttention`); 'xla' and
  'cudnn' never (they go to `jax.nn.dot_product_attention`, whose cuDNN kernel is the fast one on GPUs).
  """
  return impl == "einsum" or (impl is None and jax.default_backend() == "cpu")


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention with an optional prefill-capable key/value cache."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BLD, valid_BL, deterministic: bool, head_keep_H=None):
    """Attends each position to earlier valid positions.

    Args:
      x_BLD: Inputs in the compute dtype.
      valid_BL: bool; False marks padding, which no query may attend to. None: no padding (never when
        decoding: the cache records which slots are valid).
      deterministic: Disables attention dropout.
      head_keep_H: Optional per-head multipliers of the heads' outputs before `c_proj` (0 ablates a head).

    Returns:
      [B, L, D] attention output after the `c_proj` projection.
    """
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    H, K = cfg.num_heads, cfg.head_dim
    B, L, _ = x_BLD.shape

    # HF's Conv1D c_attn is one (D, 3D) matrix laid out [q | k | v], heads contiguous within each; the same
    # numbers reshaped to (D, 3, H, K) let the heads axis be sharded over the tensor mesh axis.
    qkv_BL3HK = nn.DenseGeneral(
        features=(3, H, K), axis=-1, dtype=dtype, param_dtype=param_dtype,
        dot_general=dots.layer_dot_general(cfg.weight_left),
        kernel_init=_normal(cfg.init_std, ("embed", "qkv", "heads", "kv")),
        bias_init=_zeros(("qkv", "heads", "kv")), name="c_attn")(x_BLD)
    q_BLHK, k_BLHK, v_BLHK = (qkv_BL3HK[:, :, i] for i in range(3))

    if cfg.decode:
      k_BSHK, v_BSHK, key_valid_BS, query_slot_BL = self._update_cache(k_BLHK, v_BLHK, valid_BL)
    else:
      k_BSHK, v_BSHK, key_valid_BS, query_slot_BL = k_BLHK, v_BLHK, valid_BL, jnp.arange(L)[None]
    S = k_BSHK.shape[1]
    causal_BLS = jnp.arange(S)[None, None, :] <= query_slot_BL[:, :, None]
    mask_B1LS = causal_BLS[:, None]
    if key_valid_BS is not None:
      mask_B1LS = mask_B1LS & key_valid_BS[:, None, None, :]

    use_dropout = not deterministic and cfg.attention_dropout_rate > 0.0
    probe = self.is_mutable_collection("intermediates")
    if cfg.decode and L == 1 and not (use_dropout or probe) and _einsum_attention(cfg.attention_impl):
      # One new query per row (a decode step): products and sums over the cache in its own [B, S, H, K] order,
      # which XLA fuses into one pass over it. The batched matmuls below want it heads-major and made XLA copy
      # the whole cache into [B, H, S, K] twice per layer and step (16 of 63 ms of an 8-slot GPT-2 small step
      # over 256 positions on a 2-core CPU).
      q_B1HK = q_BLHK * jnp.asarray(1.0 / math.sqrt(K), q_BLHK.dtype)
      logits_BSH = (k_BSHK * q_B1HK).sum(-1, dtype=jnp.float32)
      logits_BSH = jnp.where(mask_B1LS[:, 0, 0, :, None], logits_BSH, jnp.finfo(jnp.float32).min)
      probs_BSH = jax.nn.softmax(logits_BSH, axis=1)
      out_BLHK = (probs_BSH[..., None].astype(dtype) * v_BSHK).sum(1, keepdims=True)
    elif use_dropout or probe or _einsum_attention(cfg.attention_impl):
      # Our own masked softmax: attention dropout, probabilities kept for probing (`mutable=['intermediates']`),
      # and the CPU default. jax.nn.dot_product_attention's XLA path adds a grouped-heads axis, five-dimensional
      # transposes and a broadcast mask whose backward costs the CPU ~4x the attention's FLOPs; these three
      # head-major batched matmuls do not. Scaling q (L x K) rather than the scores (L x S) saves a pass.
      q_BHLK = (q_BLHK * jnp.asarray(1.0 / math.sqrt(K), q_BLHK.dtype)).transpose(0, 2, 1, 3)
      logits_BHLS = jnp.einsum("BHLK,BHSK->BHLS", q_BHLK, k_BSHK.transpose(0, 2, 1, 3),
                               preferred_element_type=jnp.float32)
      logits_BHLS = jnp.where(mask_B1LS, logits_BHLS, jnp.finfo(jnp.float32).min)
      probs_BHLS = jax.nn.softmax(logits_BHLS, axis=-1)
      if probe:
        self.sow("intermediates", "attention_weights", probs_BHLS)
      probs_BHLS = nn.Dropout(cfg.attention_dropout_rate)(probs_BHLS, deterministic=not use_dropout)
      out_BHLK = jnp.einsum("BHLS,BHSK->BHLK", probs_BHLS.astype(dtype), v_BSHK.transpose(0, 2, 1, 3))
      out_BLHK = out_BHLK.transpose(0, 2, 1, 3)
    else:
      # Without padding or a cache the mask is the causal triangle: say so (is_causal) rather than pass it, which
      # lets cuDNN's flash kernel skip the masked half and never read an L x S mask from memory.
      causal_only = key_valid_BS is None and not cfg.decode
      out_BLHK = jax.nn.dot_product_attention(
          q_BLHK, k_BSHK, v_BSHK, mask=None if causal_only else mask_B1LS, is_causal=causal_only,
          implementation=cfg.attention_impl)

    if head_keep_H is not None:
      out_BLHK = out_BLHK * head_keep_H.astype(out_BLHK.dtype)[:, None]
    # HF's c_proj is (D, D) with rows ordered (head, head_dim): reshaped to (H, K, D) here.
    return nn.DenseGeneral(
        features=cfg.emb_dim, axis=(-2, -1), dtype=dtype, param_dtype=param_dtype,
        dot_general=dots.layer_dot_general(cfg.weight_left),
        kernel_init=_normal(self._residual_std(), ("heads", "kv", "embed")),
        bias_init=_zeros(("embed",)), name="c_proj")(out_BLHK)

  def _residual_std(self) -> float:
    cfg = self.config
    return cfg.init_std / math.sqrt(2 * cfg.num_layers) if cfg.scale_residual_init else cfg.init_std

  def _update_cache(self, k_BLHK, v_BLHK, valid_BL):
    """Writes L new keys/values at each row's own cache index; returns the whole cache and the queries' slots.

    Each row b writes at `index[b]` (a slot of the engine's batch fills and empties on its own); a write past the
    end is clamped to the last L slots, which only rows without a request do (the engine marks them invalid).
    """
    B, L, H, K = k_BLHK.shape
    initialised = self.has_variable("cache", "cached_key")
    # --- compress: an int8 KV cache keeps one absmax scale per (position, head); read back as the compute dtype.
    if self.config.kv_cache_dtype == "int8":
      return self._update_int8_cache(k_BLHK, v_BLHK, valid_BL, initialised)
    # --- end of int8 KV cache.
    cached_key = self.variable("cache", "cached_key", jnp.zeros, k_BLHK.shape, k_BLHK.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, v_BLHK.shape, v_BLHK.dtype)
    cached_valid = self.variable("cache", "cached_valid", jnp.zeros, valid_BL.shape, jnp.bool_)
    index = self.variable("cache", "index", lambda: jnp.zeros((B,), jnp.int32))
    if not initialised:
      # `init` sizes the cache from its input ([B, max_length]); nothing is written.
      return k_BLHK, v_BLHK, valid_BL, jnp.arange(L)[None]
    start_B = index.value
    write = jax.vmap(lambda cache, new, start: jax.lax.dynamic_update_slice_in_dim(cache, new, start, axis=0))
    cached_key.value = write(cached_key.value, k_BLHK.astype(cached_key.value.dtype), start_B)
    cached_value.value = write(cached_value.value, v_BLHK.astype(cached_value.value.dtype), start_B)
    cached_valid.value = write(cached_valid.value, valid_BL, start_B)
    index.value = start_B + L
    return cached_key.value, cached_value.value, cached_valid.value, start_B[:, None] + jnp.arange(L)

  def _update_int8_cache(self, k_BLHK, v_BLHK, valid_BL, initialised):
    """`_update_cache` with int8 keys and values: |x - q * scale| <= scale / 2, scale = max_K |x| / 127."""
    B, L, H, _ = k_BLHK.shape
    dtype = k_BLHK.dtype
    names = ("cached_key", "cached_value")
    values = [self.variable("cache", n, jnp.zeros, k_BLHK.shape, jnp.int8) for n in names]
    scales = [self.variable("cache", f"{n}_scale", jnp.ones, (B, L, H, 1), jnp.float32) for n in names]
    cached_valid = self.variable("cache", "cached_valid", jnp.zeros, valid_BL.shape, jnp.bool_)
    index = self.variable("cache", "index", lambda: jnp.zeros((B,), jnp.int32))
    if not initialised:
      return k_BLHK, v_BLHK, valid_BL, jnp.arange(L)[None]
    start_B = index.value
    write = jax.vmap(lambda cache, new, start: jax.lax.dynamic_update_slice_in_dim(cache, new, start, axis=0))
    read = []
    for var, scale, x_BLHK in zip(values, scales, (k_BLHK, v_BLHK)):
      x_BLHK = x_BLHK.astype(jnp.float32)
      s_BLH1 = jnp.maximum(jnp.abs(x_BLHK).max(axis=-1, keepdims=True) / 127.0, 1e-12)
      var.value = write(var.value, jnp.round(x_BLHK / s_BLH1).astype(jnp.int8), start_B)
      scale.value = write(scale.value, s_BLH1, start_B)
      read.append((var.value.astype(jnp.float32) * scale.value).astype(dtype))
    cached_valid.value = write(cached_valid.value, valid_BL, start_B)
    index.value = start_B + L
    return read[0], read[1], cached_valid.value, start_B[:, None] + jnp.arange(L)


class MLP(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BLD, deterministic: bool):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    h_BLF = nn.Dense(cfg.mlp_dim, dtype=dtype, param_dtype=param_dtype,
                     dot_general=dots.layer_dot_general(cfg.weight_left),
                     kernel_init=_normal(cfg.init_std, ("embed", "mlp")), bias_init=_zeros(("mlp",)),
                     name="c_fc")(x_BLD)
    h_BLF = _ACTIVATIONS[cfg.activation](h_BLF)
    std = cfg.init_std / math.sqrt(2 * cfg.num_layers) if cfg.scale_residual_init else cfg.init_std
    return nn.Dense(cfg.emb_dim, dtype=dtype, param_dtype=param_dtype,
                    dot_general=dots.layer_dot_general(cfg.weight_left),
                    kernel_init=_normal(std, ("mlp", "embed")), bias_init=_zeros(("embed",)),
                    name="c_proj")(h_BLF)


class Block(nn.Module):
  """One transformer block, pre-LN (GPT-2) or post-LN (GPT-1)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BLD, valid_BL, deterministic: bool, keep=None):
    """`keep`: None, or this layer's `ablation_masks` entries (head_H, attn, mlp): multipliers, 0 = zeroed."""
    cfg = self.config
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    attn_mod, mlp_mod = CausalSelfAttention(cfg, name="attn"), MLP(cfg, name="mlp")
    head_keep_H, attn_keep, mlp_keep = (None, None, None) if keep is None else keep
    # --- Ablations: a zeroed sub-block's output (after its c_proj, bias included) adds nothing to the stream. ---
    scaled = lambda y, k: y if k is None else y * k.astype(y.dtype)
    attn = lambda y: scaled(attn_mod(y, valid_BL, deterministic, head_keep_H), attn_keep)
    mlp = lambda y: scaled(mlp_mod(y, deterministic), mlp_keep)
    # --- end of ablations. ---
    ln_1_mod, ln_2_mod = layer_norm(cfg, "ln_1"), layer_norm(cfg, "ln_2")
    ln_1 = lambda y: ln_1_mod(y).astype(cfg.dtype)
    ln_2 = lambda y: ln_2_mod(y).astype(cfg.dtype)
    if cfg.norm == "pre":
      x_BLD = x_BLD + drop(attn(ln_1(x_BLD)))
      x_BLD = x_BLD + drop(mlp(ln_2(x_BLD)))
    else:
      x_BLD = ln_1(x_BLD + drop(attn(x_BLD)))
      x_BLD = ln_2(x_BLD + drop(mlp(x_BLD)))
    return nn.with_logical_constraint(x_BLD, ("batch", "length", "embed"))


class GPT(nn.Module):
  """The language model: token ids in, float32 next-token logits out."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens_BL, *, attention_mask_BL=None, positions_BL=None, deterministic: bool = True,
               return_hidden: bool = False, last_only: bool = False, ablation=None):
    """Runs the model.

    Args:
      tokens_BL: int token ids.
      attention_mask_BL: 1/True for real tokens, 0/False for padding (left padding for ragged batches). Default:
        all real.
      positions_BL: Explicit position ids. Default: each row counts its real tokens (`cumsum(mask) - 1`), continuing
        from the tokens already in the cache when decoding.
      deterministic: False enables dropout (needs a 'dropout' rng).
      return_hidden: Also return the final hidden states [B, L, D] (after `ln_f` where present).
      last_only: Project only the last position to the vocabulary (logits [B, 1, V]). Decoding needs no more, and
        a prompt's full [B, L, V] logits (GBs for GPT-2 at L = 1024) are not removed by XLA on its own.
      ablation: None, or `ablation_masks(config, ...)`: multipliers of each head's output, each attention
        sub-block's and each MLP's (0 = zeroed), as arrays so one compiled program serves every ablation.

    Returns:
      logits [B, L, V] float32 ([B, 1, V] with `last_only`), or (logits, hidden) when `return_hidden`.
    """
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    B, L = tokens_BL.shape
    valid_BL = (jnp.ones((B, L), jnp.bool_) if attention_mask_BL is None
                else jnp.asarray(attention_mask_BL).astype(jnp.bool_))
    # Without padding (training) the attention mask is the causal triangle alone, a compile-time constant.
    key_valid_BL = None if attention_mask_BL is None and not cfg.decode else valid_BL
    if positions_BL is None and key_valid_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    elif positions_BL is None:
      positions_BL = jnp.cumsum(valid_BL, axis=1, dtype=jnp.int32) - 1
      if cfg.decode:
        # Real tokens seen so far in each row: new positions continue from there.
        initialised = self.has_variable("cache", "num_valid")
        num_valid = self.variable("cache", "num_valid", jnp.zeros, (B,), jnp.int32)
        positions_BL = positions_BL + num_valid.value[:, None]
        if initialised:
          num_valid.value = num_valid.value + valid_BL.sum(axis=1, dtype=jnp.int32)
      positions_BL = jnp.maximum(positions_BL, 0)

    wte = nn.Embed(cfg.vocab_size, cfg.emb_dim, dtype=dtype, param_dtype=param_dtype,
                   embedding_init=_normal(cfg.init_std, ("vocab", "embed")), name="wte")
    wpe = nn.Embed(cfg.block_size, cfg.emb_dim, dtype=dtype, param_dtype=param_dtype,
                   embedding_init=_normal(cfg.init_std, ("position", "embed")), name="wpe")
    x_BLD = wte(tokens_BL) + wpe(positions_BL)
    x_BLD = nn.Dropout(cfg.dropout_rate)(x_BLD, deterministic=deterministic)
    x_BLD = nn.with_logical_constraint(x_BLD, ("batch", "length", "embed"))
    # The residual stream, for probing: kept only when the caller makes 'hidden_states' mutable.
    self.sow("hidden_states", "residual", x_BLD)

    block = nn.remat(Block, static_argnums=(3,)) if cfg.remat else Block
    for i in range(cfg.num_layers):
      keep = None if ablation is None else (ablation["head"][i], ablation["attn"][i], ablation["mlp"][i])
      x_BLD = block(cfg, name=f"h_{i}")(x_BLD, key_valid_BL, deterministic, keep)
      self.sow("hidden_states", "residual", x_BLD)
    if cfg.final_norm:
      x_BLD = layer_norm(cfg, "ln_f")(x_BLD).astype(dtype)

    head_BLD = x_BLD[:, -1:] if last_only else x_BLD
    if cfg.tie_embeddings and last_only and 1 < B <= _VOCAB_MAJOR_ROWS and jax.default_backend() == "cpu":
      # Decoding a few rows on a CPU: the embedding as the matmul's left operand, [V, B] out. XLA:CPU repacks the
      # [V, D] embedding (154 MB for GPT-2) when it is the right operand of a small-M matmul: at 8 rows this
      # form took 7.8 ms against 11.7 (2 cores). The barrier keeps XLA from folding the transpose back into the dot.
      # Accelerators keep the usual product (not measured there).
      logits_VB = jnp.einsum("VD,BD->VB", wte.embedding.astype(dtype), head_BLD[:, 0],
                             preferred_element_type=jnp.float32)
      logits_BLV = jax.lax.optimization_barrier(logits_VB).T[:, None]
    elif cfg.tie_embeddings:
      logits_BLV = dots.layer_dot_general()(head_BLD, wte.embedding.astype(dtype), (((2,), (1,)), ((), ())),
                                            preferred_element_type=jnp.float32)
    else:
      logits_BLV = nn.Dense(cfg.vocab_size, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                            dot_general=dots.layer_dot_general(cfg.weight_left),
                            kernel_init=_normal(cfg.init_std, ("embed", "vocab")), name="lm_head")(head_BLD)
    logits_BLV = logits_BLV.astype(jnp.float32)
    return (logits_BLV, x_BLD) if return_hidden else logits_BLV


def ablation_masks(config: ModelConfig, ablations=()) -> dict:
  """The `ablation=` argument of `GPT`: multipliers that zero what `ablations` names.

  Args:
    config: The model's config.
    ablations: ("head", layer, head) zeroes one head's output (its slice of `c_proj`'s input), ("attn", layer) a
      whole attention sub-block's output, ("mlp", layer) an MLP's output (each after its `c_proj`, bias included).

  Returns:
    {'head': float32 [num_layers, num_heads], 'attn': [num_layers], 'mlp': [num_layers]}, 1 = kept, 0 = zeroed.
  """
  masks = {"head": np.ones((config.num_layers, config.num_heads), np.float32),
           "attn": np.ones((config.num_layers,), np.float32), "mlp": np.ones((config.num_layers,), np.float32)}
  for item in ablations:
    kind = item[0] if isinstance(item, (tuple, list)) and item else None
    arity = {"head": 3, "attn": 2, "mlp": 2}.get(kind)
    if arity is None or len(item) != arity or not all(isinstance(i, int) and not isinstance(i, bool)
                                                       for i in item[1:]):
      raise ValueError(f"ablations: {item!r} is not ('head', layer, head), ('attn', layer) or ('mlp', layer)")
    if not 0 <= item[1] < config.num_layers:
      raise ValueError(f"ablations: layer {item[1]} in {item!r} is outside [0, num_layers={config.num_layers})")
    if kind == "head":
      if not 0 <= item[2] < config.num_heads:
        raise ValueError(f"ablations: head {item[2]} in {item!r} is outside [0, num_heads={config.num_heads})")
      masks["head"][item[1], item[2]] = 0.0
    else:
      masks[kind][item[1]] = 0.0
  return masks


def init_params(config: ModelConfig, rng: jax.Array) -> dict:
  """Initialises parameters (boxed with logical axis names: unbox with `nn.meta.unbox`)."""
  dummy = jnp.zeros((1, min(8, config.block_size)), jnp.int32)
  return GPT(dataclasses.replace(config, decode=False)).init(rng, dummy)["params"]


def init_cache(config: ModelConfig, batch_size: int, max_length: int) -> dict:
  """An empty decoding cache for `batch_size` rows of up to `max_length` tokens (no parameters materialised)."""
  if max_length > config.block_size:
    raise ValueError(f"max_length={max_length} exceeds the model's context block_size={config.block_size}")
  model = GPT(dataclasses.replace(config, decode=True))
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((batch_size, max_length), jnp.int32)))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(nn.meta.unbox(params)))
