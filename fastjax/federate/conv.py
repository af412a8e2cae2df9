"""Convolution formulations for the pixel models (NHWC input, HWIO kernel).

- "im2col" (default): shifted slices concatenated along the channel axis, then one
  matmul. Written for one client, it becomes a *client-batched* matmul when the local
  update is vmapped over clients, which XLA runs fast on CPU and GPU alike.
- "winograd": F(2x2, 3x3) for 3x3 / stride 1 / pad 1 convolutions (2.25x fewer
  multiplies; its transforms are elementwise passes), im2col for the others.
- "lax": `lax.conv_general_dilated`; vmapped over clients with per-client weights it
  lowers to a grouped convolution (the client axis folded into feature groups), which
  was ~8x slower on CPU and 2.4x slower on an H100 than im2col (benchmarks/RESULTS.md,
  issue #11).

All three give the same numbers to float tolerance (tests/test_federate.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CONV_IMPLS = ("im2col", "winograd", "lax")


# Winograd F(2x2, 3x3) (Lavin & Gray 2016): Y = A^T [(G g G^T) * (B^T d B)] A.
_WG = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def _winograd_input(xp, t_h: int, t_w: int):
    """B^T d B for every 4x4 tile (stride 2) of the padded input, without forming the
    tiles: B^T's rows are +-1 combinations of four row-shifted strided views."""

    def rows(v, axis):  # the four combinations of B^T along one axis
        s = [jax.lax.slice_in_dim(v, i, i + 2 * (t_h if axis == 1 else t_w) - 1, 2, axis) for i in range(4)]
        return (s[0] - s[2], s[1] + s[2], s[2] - s[1], s[1] - s[3])

    out = []
    for r in rows(xp, 1):
        out.extend(rows(r, 2))
    return jnp.stack(out)  # (16, B, t_h, t_w, C)


def conv3x3_winograd(x, kernel):
    """3x3, stride 1, padding 1 convolution by Winograd F(2x2, 3x3): 16 (C x O) matmuls
    over 2x2 output tiles, 2.25x fewer multiply-adds than direct or im2col convolution.
    Odd sizes are padded by one row / column and cropped."""
    b, h, w, c = x.shape
    t_h, t_w = -(-h // 2), -(-w // 2)
    xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * t_h - h), (1, 1 + 2 * t_w - w), (0, 0)))
    g = jnp.asarray(_WG, kernel.dtype)
    u = jnp.einsum("ai,ijco,bj->abco", g, kernel, g).reshape(16, c, -1)
    v = _winograd_input(xp, t_h, t_w).reshape(16, -1, c)
    m = jnp.matmul(v, u).reshape(4, 4, b, t_h, t_w, -1)
    # A^T = [[1, 1, 1, 0], [0, 1, -1, -1]] along both tile axes.
    m = jnp.stack([m[0] + m[1] + m[2], m[1] - m[2] - m[3]])
    m = jnp.stack([m[:, 0] + m[:, 1] + m[:, 2], m[:, 1] - m[:, 2] - m[:, 3]], axis=1)
    y = m.transpose(2, 3, 0, 4, 1, 5).reshape(b, 2 * t_h, 2 * t_w, -1)
    return y[:, :h, :w]


def conv2d(x, kernel, stride: int = 1, padding: int = 0, impl: str = "im2col"):
    """2-D convolution, NHWC input and HWIO kernel, symmetric zero padding."""
    if impl == "winograd" and kernel.shape[:2] == (3, 3) and stride == 1 and padding == 1:
        return conv3x3_winograd(x, kernel)
    if impl == "lax":
        return jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), [(padding, padding)] * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    kh, kw, cin, cout = kernel.shape
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    h_out = (x.shape[1] - kh) // stride + 1
    w_out = (x.shape[2] - kw) // stride + 1
    if kh == kw == 1:
        cols = x[:, : stride * (h_out - 1) + 1 : stride, : stride * (w_out - 1) + 1 : stride]
    else:
        cols = jnp.concatenate(
            [x[:, i : i + stride * (h_out - 1) + 1 : stride, j : j + stride * (w_out - 1) + 1 : stride]
             for i in range(kh) for j in range(kw)], axis=-1)
    # A 2-D (rows x K) @ (K x O) matmul: vmapped over clients it becomes a canonical
    # batched matmul, which XLA's CPU backend runs as a fast GEMM (a dot with several
    # free dimensions on the left does not get that path).
    y = jnp.dot(cols.reshape(-1, kh * kw * cin), kernel.reshape(kh * kw * cin, cout))
    return y.reshape(cols.shape[:-1] + (cout,))
