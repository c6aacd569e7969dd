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


def layer_dot_general():
  """The `dot_general` for this backend's layers."""
  return dot_general if use_for_backend() else jax.lax.dot_general
