"""Models trained by the federated engine, in Flax, found by name in `MODELS`.

Convolutions come from `conv.py` (`conv_impl`: im2col by default, Winograd, or the
library's `lax.conv`); all give the same numbers to float tolerance.

Every model takes `(x, train, mask, outputs)`; `mask` (B,) marks the real samples of a
padded batch so BatchNorm statistics ignore padding. `outputs="logits"` (default) returns
the logits; `"features"` returns (logits, h) with h the penultimate features that the
query strategies read (the flattened input of the final linear layer); `"taps"` returns
(logits, h, taps) with the intermediate feature maps of the four stages (CNN-4's blocks,
ResNet-8's stem/stages) that LL4AL's loss-prediction module reads.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastjax.federate.conv import CONV_IMPLS, conv2d

# torch.nn.Conv2d / Linear default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_torch_uniform = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _bias_init(fan_in: int):
    bound = 1.0 / max(fan_in, 1) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def max_pool2(x):
    """2x2 max pooling, stride 2, floor mode (as torch.nn.MaxPool2d(2))."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Conv(nn.Module):
    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    use_bias: bool = True
    impl: str = "im2col"

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        fan_in = k * k * x.shape[-1]
        kernel = self.param("kernel", _torch_uniform, (k, k, x.shape[-1], self.features))
        y = conv2d(x, kernel, self.stride, self.padding, self.impl)
        if self.use_bias:
            y = y + self.param("bias", _bias_init(fan_in), (self.features,))
        return y


def _bn(train: bool, mask):
    # torch BatchNorm2d: momentum 0.1 (flax's 0.9), eps 1e-5.
    bn = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
    if mask is None or not train:
        return bn
    return lambda x: bn(x, mask=jnp.broadcast_to(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape))


OUTPUTS = ("logits", "features", "taps")


def _outputs(kind: str, logits, h, taps):
    if kind == "logits":
        return logits
    if kind == "features":
        return logits, h
    if kind == "taps":
        return logits, h, tuple(taps)
    raise ValueError(f"outputs={kind!r}; choose one of {OUTPUTS}")


def _head(num_classes: int, h, zero_bias: bool = False):
    return nn.Dense(num_classes, kernel_init=_torch_uniform,
                    bias_init=nn.initializers.zeros if zero_bias else _bias_init(h.shape[-1]),
                    name="head")(h)


def head_params(variables) -> tuple:
    """(W (d, C), b (C,)) of a model's final linear layer (ALFA-Mix mixes features
    through it), found by name in the parameter tree (also inside wrapper modules)."""
    def find(tree):
        if "head" in tree:
            return tree["head"]
        for sub in tree.values():
            if isinstance(sub, dict) and (hit := find(sub)) is not None:
                return hit
        return None

    head = find(variables["params"])
    if head is None:
        raise ValueError("the model has no final linear layer named 'head'")
    return head["kernel"], head["bias"]


class CNN4(nn.Module):
    """4 x [Conv3x3 64 (pad 1) - BatchNorm - ReLU - MaxPool 2], flatten, Linear.

    The network of FAST-official (`src/network.py`, CNN4Conv) and LoGo; the flatten
    size follows the input (28 px -> 64, 32 px -> 256, 64 px -> 1024).
    """

    num_classes: int
    width: int = 64
    conv_impl: str = "im2col"

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None, outputs: str = "logits"):
        taps = []
        for _ in range(4):
            x = Conv(self.width, impl=self.conv_impl)(x)
            x = nn.relu(_bn(train, mask)(x))
            x = max_pool2(x)
            taps.append(x)
        h = x.reshape(x.shape[0], -1)
        return _outputs(outputs, _head(self.num_classes, h, zero_bias=True), h, taps)


class _BasicBlock(nn.Module):
    planes: int
    stride: int
    conv_impl: str

    @nn.compact
    def __call__(self, x, train, mask):
        out = Conv(self.planes, 3, self.stride, 1, False, self.conv_impl)(x)
        out = nn.relu(_bn(train, mask)(out))
        out = Conv(self.planes, 3, 1, 1, False, self.conv_impl)(out)
        out = _bn(train, mask)(out)
        if self.stride != 1 or x.shape[-1] != self.planes:
            x = Conv(self.planes, 1, self.stride, 0, False, self.conv_impl)(x)
            x = _bn(train, mask)(x)
        return nn.relu(out + x)


class ResNet8FAST(nn.Module):
    """FAST-official's "ResNet-8": BasicBlock ResNet with [1, 1, 1, 1] blocks, widths
    64-128-256-512, 3x3 stem, 4x4 average pool (as its ResNet18 with one block a stage).
    """

    num_classes: int
    conv_impl: str = "im2col"

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None, outputs: str = "logits"):
        x = nn.relu(_bn(train, mask)(Conv(64, 3, 1, 1, False, self.conv_impl)(x)))
        taps = []
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            x = _BasicBlock(planes, stride, self.conv_impl)(x, train, mask)
            taps.append(x)
        pool = min(4, x.shape[1])
        x = nn.avg_pool(x, (pool, pool), (pool, pool))
        h = x.reshape(x.shape[0], -1)
        return _outputs(outputs, _head(self.num_classes, h), h, taps)


class _PreActBlock(nn.Module):
    planes: int
    stride: int
    conv_impl: str

    @nn.compact
    def __call__(self, x, train, mask):
        out = nn.relu(_bn(train, mask)(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.planes:
            shortcut = Conv(self.planes, 1, self.stride, 0, False, self.conv_impl)(out)
        out = Conv(self.planes, 3, self.stride, 1, False, self.conv_impl)(out)
        out = nn.relu(_bn(train, mask)(out))
        out = Conv(self.planes, 3, 1, 1, False, self.conv_impl)(out)
        return out + shortcut


class ResNet8PreAct(nn.Module):
    """KAFAL's "ResNet-8": pre-activation ResNet (He et al. 2016b) with [1, 1, 1]
    blocks, widths 16-32-64, global average pool. Depth 8 = 6n + 2 with n = 1.
    """

    num_classes: int
    conv_impl: str = "im2col"

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None, outputs: str = "logits"):
        x = Conv(16, 3, 1, 1, False, self.conv_impl)(x)
        taps = [x]
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            x = _PreActBlock(planes, stride, self.conv_impl)(x, train, mask)
            taps.append(x)
        x = nn.relu(_bn(train, mask)(x))
        h = x.mean(axis=(1, 2))
        return _outputs(outputs, _head(self.num_classes, h), h, taps)


class LinearProbe(nn.Module):
    """A linear classifier over frozen embeddings (FAST Table II, component 1)."""

    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None, outputs: str = "logits"):
        h = x.reshape(x.shape[0], -1)
        if outputs == "taps":
            raise ValueError("the linear probe has no intermediate feature maps (LL4AL needs a "
                             "CNN: model.name=cnn4, resnet8_fast or resnet8_preact)")
        return _outputs(outputs, _head(self.num_classes, h), h, ())


MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn4": CNN4,
    "resnet8_fast": ResNet8FAST,
    "resnet8_preact": ResNet8PreAct,
    "linear": LinearProbe,
}
PIXEL_MODELS = ("cnn4", "resnet8_fast", "resnet8_preact")


def make_model(name: str, num_classes: int, conv_impl: str = "im2col") -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is not a known model; choose one of {sorted(MODELS)}")
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"model.conv_impl={conv_impl!r}; choose one of {CONV_IMPLS}")
    if name == "linear":
        return LinearProbe(num_classes)
    return MODELS[name](num_classes=num_classes, conv_impl=conv_impl)


def init_variables(model: nn.Module, input_shape: tuple[int, ...], seed: int = 0) -> dict[str, Any]:
    """Initial {'params', 'batch_stats'?} for one model given one sample's shape."""
    if not isinstance(model, LinearProbe) and (len(input_shape) != 3 or min(input_shape[:2]) < 16):
        raise ValueError(f"{type(model).__name__} needs (H, W, C) images of at least 16x16 pixels "
                         f"(four 2x poolings / strided stages), got sample shape {tuple(input_shape)}")
    x = jnp.zeros((2,) + tuple(input_shape), jnp.float32)
    return dict(model.init(jax.random.PRNGKey(seed), x, train=False))
