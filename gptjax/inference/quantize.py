"""Weight-only quantization for inference: int8 per output channel, int4 in groups of 32, and their files.

Every matrix is quantized, the tied embedding / unembedding `wte` included (for GPT-2 small it is 31% of the
weights); biases and LayerNorms stay float32 (0.1% of the bytes). A matrix `w` is viewed as `(I, O)`: I the axes a
matmul reduces over (its input), O the output channels, and a lookup table's rows are its channels:

  kernel                     shape         I (reduced)     O (channels)
  h_i/attn/c_attn/kernel     [D, 3, H, K]  D               3 * H * K
  h_i/attn/c_proj/kernel     [H, K, D]     H * K           D
  h_i/mlp/c_fc, c_proj       [D, F], [F, D] D, F           F, D
  lm_head/kernel (untied)    [D, V]        D               V
  wte/embedding, wpe         [V, D], [P, D] D              V, P   (a row's scale serves the lookup and, for wte,
                                                                   the unembedding's output channel v)

Symmetric absmax: for each group g of input indices and channel o, `scale[g, o] = max |w[g, o]| / qmax` and
`q = round(w / scale)`, so `|w - q * scale| <= scale / 2` element-wise. int8: qmax = 127, one group (the whole
input: per output channel). int4: qmax = 7, groups of 32 inputs, two values packed per byte.

Weights stay int8 / packed int4 in memory (`QuantizedTensor` leaves in `lm.params`); the engine's compiled
programs call `dequantize_tree` first, so dequantization is part of each program and the float weights are
temporaries of it. On CPUs XLA does not fuse the dequantization into the matmul: the gain there is memory, not speed.

Why not Qwix: `qwix.quantize_model(GPT(cfg), qwix.PtqProvider([QuantizationRule(weight_qtype=jnp.int8)]))` runs on
this Linen model and keeps the logical axis names, but it quantizes only the Dense / DenseGeneral kernels it sees
through `dot_general`: the tied `wte` (a gather for the lookup and an einsum on the parameter for the logits) stays
float32, which leaves int8 at 0.44x fp32 bytes for GPT-2 small instead of 0.25x. Its quantized tree (`WithAux` /
`QArray` leaves) would also need a second model and its own file format. Quantizing the parameter tree here covers
every matrix, leaves the model and its programs unchanged, and saves to plain safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import dots

MODES = ("int8", "int4")
KV_CACHE_DTYPES = ("auto", "int8")
INT4_GROUP = 32
MARKER = "quantization.json"  # Written beside config.json / model.safetensors by `save`.
_QMAX = {"int8": 127, "int4": 7}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedTensor:
  """A quantized matrix: `values` [I, O] int8 (int4: [I // 2, O] uint8, two per byte) and `scales` [I // group, O].

  `shape` and `perm` restore the parameter: its axes permuted by `perm` and flattened are `(I, O)`.
  """

  values: jax.Array
  scales: jax.Array
  mode: str = dataclasses.field(metadata=dict(static=True))
  group: int = dataclasses.field(metadata=dict(static=True))
  shape: tuple = dataclasses.field(metadata=dict(static=True))
  perm: tuple = dataclasses.field(metadata=dict(static=True))

  @property
  def nbytes(self) -> int:
    return int(self.values.nbytes) + int(self.scales.nbytes)


def _input_axes(path: tuple[str, ...], ndim: int) -> Optional[tuple[int, ...]]:
  """The axes a parameter's matmul reduces over (see the table above), or None for what stays float."""
  name = path[-1]
  if name == "embedding":
    return (1,)
  if name != "kernel":
    return None  # bias, LayerNorm scale / bias
  return tuple(range(dots.contracted_axes(path, ndim)))  # attention c_proj [H, K, D]: (0, 1); others (0,)


def quantize_array(w: np.ndarray, input_axes: tuple[int, ...], mode: str) -> QuantizedTensor:
  """Quantizes one parameter (symmetric absmax; see the module docstring for the bound)."""
  if mode not in MODES:
    raise ValueError(f"quantize mode must be one of {MODES}, got {mode!r}")
  w = np.asarray(w, np.float32)
  out_axes = tuple(a for a in range(w.ndim) if a not in input_axes)
  perm = tuple(input_axes) + out_axes
  I = math.prod(w.shape[a] for a in input_axes)
  w_IO = np.transpose(w, perm).reshape(I, -1)
  # int4: groups of 32 inputs where they divide (every GPT-2 width does); otherwise one group, as int8.
  group = INT4_GROUP if mode == "int4" and I % INT4_GROUP == 0 else I
  if mode == "int4" and I % 2:
    raise ValueError(f"int4 needs an even input size, got {I} for a parameter of shape {w.shape}")
  w_GgO = w_IO.reshape(I // group, group, -1)
  qmax = _QMAX[mode]
  scales_GO = np.abs(w_GgO).max(axis=1) / qmax
  scales_GO = np.where(scales_GO > 0, scales_GO, 1.0).astype(np.float32)  # An all-zero channel stays zero.
  q_IO = np.clip(np.round(w_GgO / scales_GO[:, None]), -qmax, qmax).astype(np.int8).reshape(I, -1)
  if mode == "int4":
    # Two's-complement nibbles: even inputs in the low half of the byte, odd inputs in the high half.
    q_IO = ((q_IO[0::2] & 0x0F) | (q_IO[1::2] << 4)).astype(np.uint8)
  return QuantizedTensor(jnp.asarray(q_IO), jnp.asarray(scales_GO), mode, group, tuple(w.shape), perm)


def dequantize(t: QuantizedTensor, dtype=jnp.float32) -> jax.Array:
  """The float parameter `t` approximates (inside a jitted program, the float weights are its temporaries)."""
  q_IO = t.values
  if t.mode == "int4":
    byte = q_IO.view(jnp.int8) if q_IO.dtype == jnp.uint8 else q_IO
    low, high = (byte << 4) >> 4, byte >> 4  # Arithmetic shifts sign-extend each nibble.
    q_IO = jnp.stack([low, high], axis=1).reshape(-1, q_IO.shape[-1])
  I = q_IO.shape[0]
  w_GgO = q_IO.reshape(I // t.group, t.group, -1).astype(jnp.float32) * t.scales[:, None]
  permuted = [t.shape[a] for a in t.perm]
  return jnp.transpose(w_GgO.reshape(permuted), np.argsort(t.perm)).astype(dtype)


def is_quantized(params) -> bool:
  return any(isinstance(x, QuantizedTensor) for x in jax.tree.leaves(params, is_leaf=_is_qt))


def _is_qt(x) -> bool:
  return isinstance(x, QuantizedTensor)


def dequantize_tree(params, dtype=jnp.float32):
  """`params` with every `QuantizedTensor` made float; the same tree (nothing traced) when there is none."""
  if not is_quantized(params):
    return params
  return jax.tree.map(lambda x: dequantize(x, dtype) if _is_qt(x) else x, params, is_leaf=_is_qt)


def quantize_params(params, mode: str) -> dict:
  """Every matrix of a GPT parameter tree quantized (`mode` 'int8' or 'int4'); biases and LayerNorms kept."""
  if is_quantized(params):
    raise ValueError("the parameters are already quantized")
  params = jax.device_get(params)

  def one(path, x):
    names = tuple(getattr(k, "key", str(k)) for k in path)
    axes = _input_axes(names, np.ndim(x))
    return x if axes is None else quantize_array(x, axes, mode)
  return jax.tree_util.tree_map_with_path(one, params)


def weight_bytes(params) -> int:
  """Bytes the parameters take in memory (quantized values and their scales counted)."""
  return sum(x.nbytes if _is_qt(x) else int(np.asarray(x).nbytes)
             for x in jax.tree.leaves(params, is_leaf=_is_qt))


def mode_of(params) -> Optional[str]:
  modes = {x.mode for x in jax.tree.leaves(params, is_leaf=_is_qt) if _is_qt(x)}
  return modes.pop() if len(modes) == 1 else ("mixed" if modes else None)


# ----- Files: config.json (ModelConfig fields) + model.safetensors (values and scales) + quantization.json ---------


def _flatten(params) -> dict[str, Any]:
  flat = {}

  def walk(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(f"{prefix}{k}/", v)
    else:
      flat[prefix[:-1]] = node
  walk("", params)
  return flat


def save(out_dir: os.PathLike, config, params, tokenizer=None) -> pathlib.Path:
  """Writes a quantized model: `model.safetensors` holds `<path>.values` / `<path>.scales` for each quantized matrix
  and `<path>` for float leaves; `quantization.json` the static layout; `config.json` the `ModelConfig`."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  tensors, layout = {}, {}
  for name, leaf in _flatten(jax.device_get(params)).items():
    if _is_qt(leaf):
      tensors[f"{name}.values"] = np.asarray(leaf.values)
      tensors[f"{name}.scales"] = np.asarray(leaf.scales)
      layout[name] = {"mode": leaf.mode, "group": leaf.group, "shape": list(leaf.shape), "perm": list(leaf.perm)}
    else:
      tensors[name] = np.asarray(leaf)
  save_file(tensors, str(out_dir / "model.safetensors"))
  (out_dir / "config.json").write_text(json.dumps({"gptjax_model": config.to_dict()}, indent=2))
  (out_dir / MARKER).write_text(json.dumps({"mode": mode_of(params), "tensors": layout}, indent=2))
  if tokenizer is not None:
    tokenizer.save(out_dir)
  return out_dir


def load(directory: os.PathLike):
  """(config, params) of a folder written by `save`, the matrices still quantized."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  from gptjax.model import ModelConfig  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory)
  config = ModelConfig.from_dict(json.loads((directory / "config.json").read_text())["gptjax_model"])
  layout = json.loads((directory / MARKER).read_text())["tensors"]
  tensors = load_file(str(directory / "model.safetensors"))
  params: dict = {}
  for name in sorted({k.rsplit(".", 1)[0] if k.endswith((".values", ".scales")) else k for k in tensors}):
    if name in layout:
      spec = layout[name]
      leaf = QuantizedTensor(jnp.asarray(tensors[f"{name}.values"]), jnp.asarray(tensors[f"{name}.scales"]),
                             spec["mode"], int(spec["group"]), tuple(spec["shape"]), tuple(spec["perm"]))
    else:
      leaf = jnp.asarray(tensors[name])
    node = params
    *parents, last = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = leaf
  return config, params


def is_quantized_folder(directory: os.PathLike) -> bool:
  return (pathlib.Path(directory) / MARKER).is_file()
