"""What travels between the server and a site: flat payloads, their bytes, run identity.

A payload is a flat dict of str -> numpy array | int | float | str | bool. Model
variables (nested dicts of arrays) travel flattened, with '/'-joined paths as keys under
a prefix. `payload_bytes` counts what a payload carries (array bytes plus string and
scalar values, 8 bytes each for numbers), Flower's own framing excluded.

>>> flat = flatten({"params": {"w": np.zeros((2, 3), np.float32)}}, "vars")
>>> list(flat), unflatten(flat, "vars")["params"]["w"].shape
(['vars/params/w'], (2, 3))
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

SEP = "/"


def flatten(tree: dict, prefix: str) -> dict[str, np.ndarray]:
    out = {}

    def walk(node, path):
        if isinstance(node, dict) or hasattr(node, "items"):
            for k, v in node.items():
                walk(v, f"{path}{SEP}{k}")
        else:
            out[path] = np.asarray(node)

    walk(tree, prefix)
    return out


def unflatten(flat: dict[str, Any], prefix: str) -> dict:
    """The nested dict stored under `prefix` by `flatten` (other keys ignored)."""
    out: dict = {}
    head = prefix + SEP
    for key, value in flat.items():
        if not key.startswith(head):
            continue
        parts = key[len(head):].split(SEP)
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = np.asarray(value)
    if not out:
        raise ValueError(f"payload has no entries under {prefix!r}; keys: {sorted(flat)[:8]}")
    return out


def payload_bytes(payload: dict[str, Any]) -> int:
    total = 0
    for v in payload.values():
        if isinstance(v, np.ndarray):
            total += v.nbytes
        elif isinstance(v, (str, bytes)):
            total += len(v)
        else:
            total += 8
    return total


def config_to_json(config) -> str:
    return config.to_json_best_effort(sort_keys=True)


def config_from_json(text: str):
    from fastjax import config as config_lib

    return config_lib.from_json(text)


def signature(config_json: str) -> str:
    """Names one run's configuration, so a site never trains on another run's labels."""
    return hashlib.sha256(config_json.encode()).hexdigest()[:16]
