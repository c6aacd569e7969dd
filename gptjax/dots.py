"""The model's matrix products, with gradients arranged as XLA:CPU computes them fastest.

`dot_general` is `jax.lax.dot_general` (the same forward, bit for bit) whose backward pass contracts the rows of
the input and of the output gradient with the input as the left operand, `dW[C, F] = sum_n x[n, C] g[n, F]`.
Left to itself, XLA:CPU's transpose of a dense layer copies the output gradient into [F, N] order first (for the
logits of the quickstart's step a 2048 x 1024 copy of 8 MB) and multiplies the other way round; with the input
first it copies the (usually narrower) input instead. Measured on a 2-core CPU, two devices of 1024 rows each,
best of 7: the weight gradient of a 128 -> 512 layer 1.51 -> 1.28 ms, 512 -> 128 2.03 -> 1.66 ms, 128 -> 2048 5.64
-> 4.61 ms. When the weight's contracted axes come last (the tied embedding [V, D] as the unembedding), the
gradient is computed in [C, F] order and transposed after an optimisation barrier, which keeps XLA from folding
the transpose back into the product (6.0 -> 4.6 ms for the quickstart's 2048 x 128 embedding).

Only on CPUs (`use_for_backend`): accelerators' matmul libraries take transposed operands for free, and the
reshuffled product could cost a resharding where a weight is split over a tensor-parallel axis.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


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
  c_axes, f_axes = tuple(range(k)), tuple(range(k, k + free))
  # XLA:CPU copies the left operand of a product over rows into [columns, rows] order: let that be the narrower.
  if math.prod(lhs.shape[rows:]) <= math.prod(g.shape[rows:]):
    d_w, order = jnp.tensordot(lhs, g, axes=(row_axes, row_axes), precision=precision), "CF"  # [C..., F...]
  else:
    d_w, order = jnp.tensordot(g, lhs, axes=(row_axes, row_axes), precision=precision), "FC"  # [F..., C...]
  wanted = "CF" if layout == "leading" else "FC"
  if order != wanted:
    # The barrier keeps XLA from folding the transpose of the (small) result back into the product.
    d_w = jnp.transpose(jax.lax.optimization_barrier(d_w),
                        tuple(range(free, free + k)) + tuple(range(free)) if order == "FC" else f_axes + c_axes)
  d_rhs = d_w
  w_free = f_axes if layout == "leading" else tuple(range(free))
  g_free = tuple(range(rows, g.ndim))
  d_lhs = jnp.tensordot(g, rhs, axes=(g_free, w_free), precision=precision)  # [N..., C...]
  return d_lhs.astype(lhs.dtype), d_rhs.astype(rhs.dtype)


_dot.defvjp(_dot_fwd, _dot_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`jax.lax.dot_general` with the backward pass above (the `dot_general` argument of flax's Dense layers)."""
  (lc, rc), (lb, rb) = dimension_numbers
  dimension_numbers = ((tuple(lc), tuple(rc)), (tuple(lb), tuple(rb)))  # Hashable, for nondiff_argnums.
  return _dot(lhs, rhs, dimension_numbers, precision, preferred_element_type)


def layer_dot_general():
  """The `dot_general` for this backend's layers."""
  return dot_general if use_for_backend() else jax.lax.dot_general
