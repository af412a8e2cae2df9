"""Flat payloads <-> Flower's RecordDict (arrays in an ArrayRecord, the rest in a
ConfigRecord). Imports flwr: only the Flower apps use it."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict


def to_records(payload: dict) -> RecordDict:
    arrays, config = {}, {}
    for k, v in payload.items():
        if isinstance(v, np.ndarray):
            arrays[k] = Array(np.ascontiguousarray(v))
        elif isinstance(v, np.generic):
            config[k] = v.item()
        else:
            config[k] = v
    records = RecordDict({"config": ConfigRecord(config)})
    if arrays:
        records["arrays"] = ArrayRecord(arrays)
    return records


def from_records(records: RecordDict) -> dict:
    out = dict(records["config"]) if "config" in records else {}
    if "arrays" in records:
        out.update({k: a.numpy() for k, a in records["arrays"].items()})
    return out
