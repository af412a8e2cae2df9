"""Encoder weights in the local Hugging Face cache: hub ids as checkpoints, no network.

`encoder.checkpoint` may name a hub repository, ``org/model`` or ``org/model@revision``;
it is resolved from the cache that ``python -m fastjax.fetch`` (through `huggingface_hub`)
fills: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``, read
as files (``models--org--model/refs/<rev>``, ``snapshots/<commit>/``). This module never
imports `huggingface_hub` and never downloads: a repository not in the cache fails at
once, naming the fetch command.

`HUB_REPOS` maps each encoder (and variant) to the repository its loader reads and the
commit it is pinned to. The pins are the commits these repositories' cached snapshots
carry in public code that records the snapshot path (the hub itself was not reachable
where this was written); only SigLIP's also appears there with its model.safetensors.
A revision of "main" means "not pinned".
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from fastjax.encode import siglip


@dataclasses.dataclass(frozen=True)
class HubRepo:
    """A repository on the hub and what fastjax takes from it (safetensors only)."""

    repo: str
    revision: str = "main"
    files: tuple[str, ...] = ("config.json", "model.safetensors")


# encoder -> {variant: repo}; "" is the variant a config leaves empty.
HUB_REPOS: dict[str, dict[str, HubRepo]] = {
    "siglip": {
        "base-patch16-224": HubRepo("google/siglip-base-patch16-224",
                                    "7fd15f0689c79d79e38b1c2e2e2370a7bf2761ed"),
        **{v: HubRepo(f"google/siglip-{v}") for v in siglip.PRESETS if v != "base-patch16-224"},
    },
    # The paper names no CLIP / DINOv2 size; the ViT-B ones match its SigLIP ViT-B/16.
    "clip": {"": HubRepo("openai/clip-vit-base-patch16",
                         "57c216476eefef5ab752ec549e440a49ae4ae5f3")},
    "dinov2": {"": HubRepo("facebook/dinov2-base", "f9e44c814b77203eaa57a6bdbbd535f21ede1415")},
    "resnet50": {"": HubRepo("microsoft/resnet-50", "34c2154c194f829b11125337b98c8f5f9965ff19")},
    # timm's format of EVA02-CLIP (fastjax/encode/evaclip.py), not pinned yet.
    "evaclip": {"large-patch14-224": HubRepo("timm/eva02_large_patch14_clip_224.merged2b"),
                "base-patch16-224": HubRepo("timm/eva02_base_patch16_clip_224.merged2b")},
}
# What each loader takes for variant None (evaclip.DEFAULT_VARIANT: FAST-official's L/14).
DEFAULT_VARIANTS = {"siglip": siglip.DEFAULT_VARIANT, "evaclip": "large-patch14-224"}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
FETCH_HINT = "python -m fastjax.fetch"


def cache_dir() -> Path:
    """The hub cache as `huggingface_hub` chooses it, read from the environment now."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    hub = (os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
           or os.path.join(home, "hub"))
    return Path(hub).expanduser()


def is_hub_id(checkpoint) -> bool:
    """``org/model[@revision]`` that is not an existing path (a local path always wins)."""
    s = str(checkpoint)
    return bool(_HUB_ID.match(s)) and not s.startswith(".") and not Path(s).expanduser().exists()


def known(repo: str) -> HubRepo | None:
    for variants in HUB_REPOS.values():
        for r in variants.values():
            if r.repo == repo:
                return r
    return None


def parse(hub_id: str) -> HubRepo:
    """``org/model[@revision]`` -> HubRepo; no revision: the pin when fastjax knows the
    repository, else "main"."""
    repo, _, revision = str(hub_id).partition("@")
    pinned = known(repo)
    files = pinned.files if pinned else ("config.json", "model.safetensors")
    return HubRepo(repo, revision or (pinned.revision if pinned else "main"), files)


def default_repo(name: str, variant: str | None) -> HubRepo | None:
    """The repository an encoder's default lookup falls back to, if any."""
    v = variant or DEFAULT_VARIANTS.get(name, "")
    return HUB_REPOS.get(name, {}).get(v)


def repo_dir(repo: str) -> Path:
    return cache_dir() / ("models--" + repo.replace("/", "--"))


def snapshot(ref: HubRepo) -> Path | None:
    """The cached snapshot of `ref` holding all its files, or None (nothing is fetched)."""
    base = repo_dir(ref.repo)
    commit = ref.revision
    if not _COMMIT.match(commit):
        head = base / "refs" / commit
        if not head.is_file():
            return None
        commit = head.read_text().strip()
    snap = base / "snapshots" / commit
    if all((snap / f).is_file() for f in ref.files):  # is_file follows the blob symlinks
        return snap
    return None


def not_cached(ref: HubRepo, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} {ref.repo}@{ref.revision} is not in the local Hugging Face cache "
        f"({repo_dir(ref.repo)} holds no snapshot with {', '.join(ref.files)}); fetch it "
        f"with: {FETCH_HINT} {ref.repo}@{ref.revision} (HF_HUB_CACHE / HF_HOME choose the "
        f"cache), or set `encoder.checkpoint` to an existing local directory. Nothing is "
        f"downloaded at run time.")


def resolve_checkpoint(name: str, checkpoint, variant, locate):
    """The checkpoint argument the loaders take: a hub id becomes its cached snapshot
    directory; no checkpoint at all falls back, after the usual local lookup
    (`locate(None, variant)`) fails, to the encoder's pinned repository when cached."""
    if checkpoint is not None and is_hub_id(checkpoint):
        ref = parse(str(checkpoint))
        found = snapshot(ref)
        if found is None:
            raise not_cached(ref, f"encoder.checkpoint={str(checkpoint)!r}:")
        return found
    if checkpoint is not None:
        return checkpoint
    try:
        locate(None, variant)
        return None
    except FileNotFoundError as e:
        ref = default_repo(name, variant)
        found = snapshot(ref) if ref is not None else None
        if found is not None:
            return found
        if ref is None:
            raise
        raise FileNotFoundError(
            f"{e}\nOr fetch {ref.repo}@{ref.revision} into the Hugging Face cache "
            f"({cache_dir()}), where it is found without any setting: "
            f"{FETCH_HINT} {name}") from None
