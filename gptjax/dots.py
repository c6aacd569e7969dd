"""The model's matrix products, with gradients arranged as XLA:CPU computes them fastest.

`dot_general` is `jax.lax.dot_general` (the same forward, bit for bit) with its own backward pass for the layers'
form (input [N..., C...], weight [C..., F...] or [F..., C...]). The weight gradient `sum_n x[n, C] g[n, F]` is a
product over the rows, and XLA:CPU first copies the left operand of such a product into [columns, rows] order.
Left to itself it put the output gradient on the left: for the quickstart's logits a 2048 x 1024 copy of 8 MB to
get the embedding's gradient. Here the narrower of the input and the output gradient goes on the left. Putting
the input on the left everywhere was worse: for the MLP's second layer XLA then recomputed the GELU inside the
copy of its (wider) input. Quickstart gradient on a 2-core CPU, two devices, best of 5 x 20 calls: 102 ms with
XLA's own transpose, 126 with the input always on the left, 98 with the narrower on the left. Where the result
comes out in the other order than the weight's, it is transposed after an optimisation barrier, which keeps XLA
from folding the transpose back into the product.

Only on CPUs (`use_for_backend`): accelerators' matmul libraries take transposed operands for free, and the
reshuffled product could cost a resharding where a weight is split over a tensor-parallel axis.

For inference on few rows (decode steps, short prompts), `weight_left_dot_general` computes a layer's product with
the weight on the left, over a copy of the kernels stored [out, in] (`to_weight_left`), which XLA:CPU streams up to
2x faster; the engine keeps that copy (`gptjax/inference/programs.py`, `weight_left_params`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


# XLA:CPU hands matmuls, and by default also reductions and elementwise work, to its YNNPACK library. For decode
# steps, matmuls only: YNNPACK's reductions over a KV cache ran ~1.2x slower than XLA's own fused loops (an 8-slot
# GPT-2 small decode step over 256 positions on a 2-core CPU, best of 4 x 8 steps: 65-67 ms with them, 52-54
# without).
DECODE_CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.lru_cache(maxsize=None)
def _xla_knows(options: tuple) -> bool:
  """Whether this jaxlib's XLA accepts the compile options (older releases lack the YNNPACK one)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.float32(0)).compile()
  except Exception:  # pylint: disable=broad-except  (XLA's INVALID_ARGUMENT: no such compile option)
    return False
  return True


def jit_with_cpu_options(cpu_options: dict, **jit_kwargs):
  """`functools.partial(jax.jit, **jit_kwargs)`, compiling with XLA options `cpu_options` when the default backend
  is a CPU and its XLA knows them (other backends never see them)."""
  def decorate(fun):
    plain = jax.jit(fun, **jit_kwargs)
    cpu = jax.jit(fun, compiler_options=cpu_options, **jit_kwargs)
    options = tuple(sorted(cpu_options.items()))

    @functools.wraps(fun)
    def call(*args, **kwargs):
      return (cpu if jax.default_backend() == "cpu" and _xla_knows(options) else plain)(*args, **kwargs)
    return call
  return decorate


def use_for_backend() -> bool:
  """Whether the model's layers use `dot_general` here (CPUs) rather than `jax.lax.dot_general`."""
  return jax.default_backend() == "cpu"


def _layout(lhs_ndim, rhs_ndim, dimension_numbers):
  """'leading' or 'trailing' (where the weight's contracted axes are) for the layers' form: no batch axes, the
  input's contracted axes last and in order; None for any other product."""
  (lc, rc), (lb, rb) = dimension_numbers
  lc, rc, k = tuple(lc), tuple(rc), len(lc)
  if lb or rb or lc != tuple(range(lhs_ndim - k, lhs_ndim)):
    return None
  if rc == tuple(range(k)):
    return "leading"
  if rc == tuple(range(rhs_ndim - k, rhs_ndim)):
    return "trailing"
  return None


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _dot(lhs, rhs, dimension_numbers, precision, preferred_element_type):
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type)


def _dot_fwd(lhs, rhs, dimension_numbers, precision, preferred_element_type):
  return _dot(lhs, rhs, dimension_numbers, precision, preferred_element_type), (lhs, rhs)


def _dot_bwd(dimension_numbers, precision, preferred_element_type, residuals, g):
  lhs, rhs = residuals
  layout = _layout(lhs.ndim, rhs.ndim, dimension_numbers)
  if layout is None:  # Not a layer's product: XLA's own transpose.
    _, vjp = jax.vjp(lambda a, b: jax.lax.dot_general(a, b, dimension_numbers, precision=precision,
                                                      preferred_element_type=preferred_element_type), lhs, rhs)
    return vjp(g)
  k = len(dimension_numbers[0][0])
  rows = lhs.ndim - k  # The input's leading (row) axes, also the output gradient's.
  free = rhs.ndim - k  # The weight's output axes.
  g = g.astype(jnp.promote_types(lhs.dtype, rhs.dtype)) if preferred_element_type is not None else g
  row_axes = tuple(range(rows))
  input_first = math.prod(lhs.shape[rows:]) <= math.prod(g.shape[rows:])  # The narrower on the left (see above).
  left, right = (lhs, g) if input_first else (g, lhs)
  d_rhs = jnp.tensordot(left, right, axes=(row_axes, row_axes), precision=precision)  # [C..., F...] or [F..., C...]
  if input_first != (layout == "leading"):
    n_left = k if input_first else free  # Move the left operand's axes after the right one's.
    d_rhs = jnp.transpose(jax.lax.optimization_barrier(d_rhs),
                          tuple(range(n_left, k + free)) + tuple(range(n_left)))
  w_free = tuple(range(k, rhs.ndim)) if layout == "leading" else tuple(range(free))
  d_lhs = jnp.tensordot(g, rhs, axes=(tuple(range(rows, g.ndim)), w_free), precision=precision)  # [N..., C...]
  return d_lhs.astype(lhs.dtype), d_rhs.astype(rhs.dtype)


_dot.defvjp(_dot_fwd, _dot_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`jax.lax.dot_general` with the backward pass above (the `dot_general` argument of flax's Dense layers)."""
  (lc, rc), (lb, rb) = dimension_numbers
  dimension_numbers = ((tuple(lc), tuple(rc)), (tuple(lb), tuple(rb)))  # Hashable, for nondiff_argnums.
  return _dot(lhs, rhs, dimension_numbers, precision, preferred_element_type)


def weight_left_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """The layers' product `x W` computed as `(W^T x^T)^T`: the weight on the left, for inference on few rows.

  With the weight stored [F..., C...] (`to_weight_left` / `from_weight_left`, as the engine's decode programs keep
  it), XLA:CPU streams it ~1.5-2x faster at 8-32 rows than the usual product over [C..., F...]. On a 2-core CPU,
  best of 5 x 100 calls over 12 distinct kernels: 768 -> 3072 0.86 -> 0.58 ms, 3072 -> 768 0.89 -> 0.39 ms,
  768 -> 2304 0.60 -> 0.42 ms at 8 rows; 1.06 -> 0.66, 1.01 -> 0.45 at 16; even at 1 row 3072 -> 768 0.39 -> 0.29.
  At 512 rows and more it is no faster, and the weight-left product of a kernel stored [C..., F...] is ~3x slower:
  only for kernels stored the other way round. Not differentiated by our own rule (inference only).
  """
  layout = _layout(lhs.ndim, rhs.ndim, dimension_numbers)
  if layout != "leading":  # The tied unembedding ([V, D], already weight-major) and any other product.
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  k = len(dimension_numbers[0][0])
  rows, free = lhs.ndim - k, rhs.ndim - k
  # Stored [F..., C...]: `rhs` is its transpose, and this transpose cancels it, so XLA reads the stored array.
  w_FC = jnp.transpose(rhs, tuple(range(k, rhs.ndim)) + tuple(range(k)))
  out_FN = jax.lax.dot_general(w_FC, lhs, ((tuple(range(free, rhs.ndim)), tuple(range(rows, lhs.ndim))), ((), ())),
                               precision=precision, preferred_element_type=preferred_element_type)
  # The barrier keeps XLA from folding the (small) transpose of the result back into the product.
  return jnp.transpose(jax.lax.optimization_barrier(out_FN), tuple(range(free, free + rows)) + tuple(range(free)))


def contracted_axes(path: tuple[str, ...], ndim: int) -> int:
  """How many leading axes of a layer kernel (named `path`) its product reduces: attention's [H, K, D] `c_proj` 2,
  every other kernel ([D, 3, H, K], [D, F], [F, D], [D, V]) 1."""
  return 2 if path[-2:] == ("c_proj", "kernel") and ndim == 3 else 1


def _moved_kernels(params, inverse: bool):
  """`params` with every layer kernel's contracted axes moved last ([C..., F...] -> [F..., C...]), or back."""
  def one(path, x):
    names = tuple(p.key for p in path if isinstance(p, jax.tree_util.DictKey))  # (a boxed leaf's `.value` left out)
    if not names or names[-1] != "kernel" or not hasattr(x, "ndim"):
      return x
    k = contracted_axes(names, x.ndim)
    split = x.ndim - k if inverse else k
    return jnp.transpose(x, tuple(range(split, x.ndim)) + tuple(range(split)))
  return jax.tree_util.tree_map_with_path(one, params)


def to_weight_left(params):
  """Every layer kernel of a GPT parameter tree stored [F..., C...] (the weight-left products' layout)."""
  return _moved_kernels(params, inverse=False)


def from_weight_left(params):
  """The inverse of `to_weight_left`: inside a program, the model's view of the stored kernels."""
  return _moved_kernels(params, inverse=True)


def layer_dot_general(weight_left: bool = False):
  """The `dot_general` for this backend's layers (`weight_left`: `weight_left_dot_general`)."""
  if weight_left:
    return weight_left_dot_general
  return dot_general if use_for_backend() else jax.lax.dot_general
