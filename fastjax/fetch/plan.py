"""What a config (or a list of names) needs from the network, and whether it is here.

An item is a dataset (``cifar10``, ``pathmnist:224``), an encoder by registry name
(``siglip``, ``siglip:base-patch16-384``: its pinned hub repository, `encode.hub.HUB_REPOS`)
or a hub id (``org/model[@revision]``). `from_config` gives the items a run of that
config reads; `status` says where each is found (nothing is read or decoded).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

from fastjax.encode import hub


@dataclasses.dataclass(frozen=True)
class Item:
    """kind: "dataset" | "encoder" | "weights" (a user's own path: shown, never fetched)."""

    kind: str
    key: str  # dataset item, or encoder name
    ref: hub.HubRepo | None = None  # the repository an encoder item is fetched from
    variant: str | None = None
    checkpoint: str | None = None


def load_config(spec: str):
    """``configs/x.py[:arg]`` -> its `get_config([arg])`, validated."""
    from fastjax import config as config_lib

    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"--config {spec!r}: {path} is not a file (e.g. configs/cifar10.py)")
    mod_spec = importlib.util.spec_from_file_location("fastjax_fetch_config", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    config = mod.get_config(arg) if arg else mod.get_config()
    config_lib.validate(config)
    return config


def encoder_item(name: str, variant: str | None, checkpoint: str | None) -> Item:
    if checkpoint and hub.is_hub_id(checkpoint):
        return Item("encoder", name, hub.parse(checkpoint), variant, checkpoint)
    if checkpoint:
        return Item("weights", name, None, variant, checkpoint)
    return Item("encoder", name, hub.default_repo(name, variant), variant, None)


def from_config(config) -> list[Item]:
    from fastjax import config as config_lib

    items = []
    if config.data.name != "imagefolder":  # a user's own folder: nothing to fetch
        items.append(Item("dataset", config.data.name))
    if config_lib.needs_encoder(config):
        e = config.encoder
        items.append(encoder_item(e.name, e.variant or None, e.checkpoint or None))
    return items


def parse_item(text: str) -> Item:
    """A command-line name: dataset, encoder[:variant] or hub id."""
    from fastjax.encode import ENCODERS
    from fastjax.fetch.datasets import RELEASE_FILES

    name, _, option = text.partition(":")
    if "/" in text:
        return encoder_item(_encoder_of(text), None, text)
    if text in RELEASE_FILES:
        return Item("dataset", text)
    if name in RELEASE_FILES:
        raise ValueError(f"{text!r}: no such release of {name}; known: "
                         f"{', '.join(k for k in RELEASE_FILES if k.partition(':')[0] == name)}")
    if name in ENCODERS:
        return encoder_item(name, option or None, None)
    raise ValueError(f"unknown item {text!r}: give a dataset ({', '.join(sorted(RELEASE_FILES))}), "
                     f"an encoder ({', '.join(sorted(ENCODERS))}, optionally name:variant) "
                     f"or a hub id org/model[@revision]")


def _encoder_of(hub_id: str) -> str:
    repo = hub_id.partition("@")[0]
    for name, variants in hub.HUB_REPOS.items():
        if any(r.repo == repo for r in variants.values()):
            return name
    return repo  # a repository fastjax does not know: fetched as asked, loaded by path


def status(item: Item, data_root) -> tuple[bool, str]:
    """(present, where): the loader's own lookup, without reading anything."""
    from fastjax import encode
    from fastjax.fetch import datasets

    if item.kind == "dataset":
        found = datasets.present(item.key, data_root)
        missing = [s for s, p in found.items() if p is None]
        where = ", ".join(sorted({str(p) for p in found.values() if p is not None}))
        if missing:
            return False, (f"{'/'.join(missing)} not found " + _roots(data_root)
                           + (f" (found {where})" if where else ""))
        return True, where
    if item.ref is not None and item.checkpoint:  # a hub id: only its snapshot counts
        snap = hub.snapshot(item.ref)
        return (snap is not None,
                str(snap) if snap else f"not in {hub.repo_dir(item.ref.repo)}")
    if item.key not in encode.ENCODERS:
        return False, f"{item.key} is not an encoder fastjax loads"
    try:
        return True, str(encode.check_weights(item.key, item.checkpoint, item.variant))
    except (FileNotFoundError, ValueError) as e:
        lines = str(e).splitlines()
        searched = [s.strip() for s in lines[1:] if s.startswith("  ")]  # find_checkpoint's list
        cache = f"; not in {hub.repo_dir(item.ref.repo)}" if item.ref else ""
        return False, (f"searched {', '.join(searched)}{cache}" if searched else lines[0])


def _roots(data_root) -> str:
    from fastjax.data.loaders import resolve_roots

    roots = resolve_roots(data_root)
    return f"under {roots[0]}" if roots else "(no data root: --data-root / $FASTJAX_DATA_ROOT)"


def data_root(arg: str | None, config=None) -> Path | None:
    """--data-root, else the config's data.root, else $FASTJAX_DATA_ROOT (as the runs)."""
    from fastjax.data.loaders import resolve_roots

    root = arg or (config.data.root if config is not None else "") or None
    roots = resolve_roots(root)
    return roots[0] if roots else None
