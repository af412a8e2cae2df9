"""python -m fastjax.doctor: one screen of facts, and --strict for what a config lacks."""

import importlib.metadata

import jax

from fastjax import doctor


def test_doctor_shows_devices_versions_cache_and_what_the_demo_reads(capsys, monkeypatch,
                                                                      tmp_path):
    monkeypatch.setenv("FASTJAX_COMPILATION_CACHE", str(tmp_path / "xla"))
    (tmp_path / "xla").mkdir()
    (tmp_path / "xla" / "prog").write_bytes(b"x" * 2048)
    assert doctor.main(["--config", "configs/demo.py", "--strict"]) == 0  # all offline
    out = capsys.readouterr().out.splitlines()
    assert len(out) <= 24  # one screen
    text = "\n".join(out)
    assert f"jax {jax.__version__}" in text
    assert f"flax {importlib.metadata.version('flax')}" in text
    assert f"backend: {jax.default_backend()}" in text
    assert f"{jax.devices()[0].id}: {jax.devices()[0].device_kind}" in text
    assert f"compile cache: {tmp_path / 'xla'} (1 file, 0.0 MiB)" in text
    assert any(line.startswith("ok      dataset mnist: ") for line in out)
    assert any(line.startswith("ok      encoder efficientnet_lite0: ") and line.endswith(".pth")
               for line in out)


def test_doctor_strict_fails_on_what_the_config_lacks(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("FASTJAX_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    args = ["--config", "configs/cifar10.py", "--data-root", str(tmp_path)]
    assert doctor.main(args) == 0
    first = capsys.readouterr().out
    assert doctor.main(args + ["--strict"]) == 1
    assert capsys.readouterr().out == first
    assert f"MISSING dataset cifar10: train/test not found under {tmp_path}" in first
    assert (f"MISSING encoder siglip (google/siglip-base-patch16-224@7fd15f0689c7): searched "
            f"(nothing: no checkpoint given); not in {tmp_path / 'hf'}") in first
    assert (f"fetch what is missing: python -m fastjax.fetch --config configs/cifar10.py "
            f"--data-root {tmp_path}") in first


def test_doctor_refuses_a_config_that_is_not_a_file(capsys):
    assert doctor.main(["--config", "configs/nope.py"]) == 2
    assert capsys.readouterr().err.startswith("fastjax: error: --config 'configs/nope.py'")
