"""The Flower ServerApp of a FAST run: reads the run config, waits for one SuperNode
per client, and runs `fastjax.deploy.server.run_server` over Flower's Grid.

Run config (`[tool.flwr.app.config]` in fastjax/deploy/pyproject.toml; override with
`flwr run ... --run-config "key=value ..."`):
  config      configs/<experiment>.py on the server machine (relative paths: from the
              SuperLink's working directory)
  overrides   space-separated key=value config overrides, e.g. "train.rounds=5"
  workdir     the server's work directory (checkpoints/, metrics.jsonl, summary.json)
  on-failure  "fail" | "aggregate": a site that errs or does not answer in a round
              stops the run (checkpoint kept) or is left out of that round's aggregate
  timeout     seconds to wait for the sites' replies, per phase and per round
  wait-nodes  seconds to wait for all SuperNodes to connect
  poll        seconds between the server's checks for the sites' replies (default 0.05;
              Flower's own Grid.send_and_receive waits 3 s between checks)

`flwr run` exits 0 whatever the run's outcome (Flower's CLI does not report it), so the
ServerApp writes the outcome to `<workdir>/status.json` ("running", then "done",
"awaiting_annotations" or "failed" with the reason in one line) and prints a failure
as one line instead of a traceback; `python -m fastjax.deploy.status <workdir>` exits 0
only for "done".
"""

from __future__ import annotations

import ast
import datetime
import importlib.util
import json
import os
import re
import sys
import time

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from fastjax import files
from fastjax.deploy import server, supernode
from fastjax.deploy.records import from_records, to_records

app = ServerApp()
MESSAGE_TYPES = {"preliminary": "query.preliminary", "refine": "query.refine", "train": "train"}
POLL_SECONDS = 0.05  # how often the server asks the SuperLink for the sites' replies
STATUS = "status.json"


def load_config(path: str, overrides: str = ""):
    """configs/<x>.py's get_config(), with "a.b=value ..." overrides applied."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"run config 'config'={path!r} is not a file (cwd {os.getcwd()}); "
                                "pass --run-config \"config='/abs/path/configs/demo.py'\"")
    spec = importlib.util.spec_from_file_location("fastjax_flower_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    for item in overrides.split():
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value (e.g. train.rounds=5)")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        *path_, leaf = key.split(".")
        target = config
        for p in path_:
            target = getattr(target, p)
        try:
            setattr(target, leaf, value)
        except (AttributeError, KeyError, TypeError) as e:
            raise ValueError(f"override {item!r}: {e}") from None
    return config


def error_reason(reason: str) -> str:
    """One line from a ClientApp's error reply ("<class 'T'>:<'message'>" in flwr 1.42)."""
    m = re.match(r"<class '(?:[\w.]*\.)?(\w+)'>:<'(.*)'>\s*$", str(reason), re.S)
    text = f"{m[1]}: {m[2]}" if m else str(reason)
    return " ".join(text.split())


class FlowerTransport:
    """`server.Transport` over Flower's Grid: one SuperNode per client id."""

    def __init__(self, grid: Grid, num_clients: int, wait_nodes: float, poll: float = POLL_SECONDS):
        self._grid, self._poll = grid, poll
        self._node_of: dict[int, int] = {}
        deadline = time.monotonic() + wait_nodes
        while len(list(grid.get_node_ids())) < num_clients:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(list(grid.get_node_ids()))} SuperNodes connected after "
                                   f"{wait_nodes:.0f} s; the run needs one per client "
                                   f"(partition.num_clients={num_clients})")
            time.sleep(0.5)

    def _send_and_receive(self, out: list[Message], timeout: float) -> list[Message]:
        """Grid.send_and_receive, checking for replies every `poll` seconds, not its fixed 3 s."""
        waiting = set(self._grid.push_messages(out))
        answers, deadline = [], time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            got = list(self._grid.pull_messages(waiting))
            answers += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if waiting:
                time.sleep(self._poll)
        return answers

    def _exchange(self, phase, by_node: dict[int, dict], timeout):
        out = [Message(to_records(m), dst_node_id=node, message_type=MESSAGE_TYPES[phase],
                       group_id=f"{phase}-{m.get('round', 0)}") for node, m in by_node.items()]
        replies, errors = {}, {}
        answers = self._send_and_receive(out, timeout)
        # By the message answered: the SuperLink itself answers for a node it lost.
        dst = {m.metadata.message_id: m.metadata.dst_node_id for m in out}
        for rep in answers:
            node = dst.get(rep.metadata.reply_to_message_id, rep.metadata.src_node_id)
            if rep.has_error():
                errors[node] = error_reason(rep.error.reason) or f"error code {rep.error.code}"
            else:
                replies[node] = from_records(rep.content)
        for node in by_node:
            if node not in replies and node not in errors:
                errors[node] = f"no reply within {timeout:.0f} s (SuperNode {node} dropped out?)"
        return replies, errors

    def first_contact(self, phase, msg, timeout):
        nodes = sorted(self._grid.get_node_ids())
        replies, errors = self._exchange(phase, {n: msg for n in nodes}, timeout)
        if errors:
            node = min(errors)
            raise RuntimeError(f"{phase} pass: SuperNode {node} failed: {errors[node]}")
        for node, rep in replies.items():
            k = int(rep["client"])
            if k in self._node_of:
                raise RuntimeError(f"SuperNodes {self._node_of[k]} and {node} both claim client {k}; "
                                   "give each a different node-config partition-id")
            self._node_of[k] = node
        return {int(r["client"]): r for r in replies.values()}

    def send(self, phase, msgs, timeout):
        live = set(self._grid.get_node_ids())
        gone = {k: f"SuperNode {self._node_of[k]} is no longer connected" for k in msgs
                if self._node_of[k] not in live}
        by_node = {self._node_of[k]: m for k, m in msgs.items() if k not in gone}
        replies, errors = self._exchange(phase, by_node, timeout) if by_node else ({}, {})
        client = {n: k for k, n in self._node_of.items()}
        return ({client[n]: r for n, r in replies.items() if n in client},
                {**gone, **{client[n]: e for n, e in errors.items() if n in client}})


def write_status(workdir, run_id, status: str, **extra) -> None:
    """<workdir>/status.json: this `flwr run`'s outcome (best effort: a work directory
    that cannot be written keeps none)."""
    record = {"status": status, "run_id": str(run_id),
              "time": datetime.datetime.now().isoformat(timespec="seconds"), **extra}
    try:
        os.makedirs(workdir, exist_ok=True)
        files.atomic_write_text(os.path.join(workdir, STATUS), json.dumps(record, indent=2) + "\n")
    except OSError:
        pass


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    workdir = str(rc.get("workdir", "runs/flower"))
    log = lambda m: print(f"[fastjax] {m}", file=sys.stderr, flush=True)  # noqa: E731
    write_status(workdir, context.run_id, "running")
    try:
        config = load_config(str(rc.get("config", "")), str(rc.get("overrides", "")))
        on_failure, timeout = str(rc.get("on-failure", "fail")), float(rc.get("timeout", 600))
        server.check_config(config, on_failure)  # before waiting for SuperNodes
        supernode.shorten_pull_backoff()  # the sites' replies: asked again after 0.02 s, not 1 s
        transport = FlowerTransport(grid, config.partition.num_clients, float(rc.get("wait-nodes", 120)),
                                    float(rc.get("poll", POLL_SECONDS)))
        summary = server.run_server(config, workdir, transport, on_failure=on_failure,
                                    timeout=timeout, log=log)
    except Exception as e:  # noqa: BLE001  (one line for the person, the outcome in status.json)
        reason = f"{type(e).__name__}: {' '.join(str(e).split())}"
        log(f"failed: {reason}")
        write_status(workdir, context.run_id, "failed", error=reason)
        return
    write_status(workdir, context.run_id, summary["status"],
                 summary=os.path.join(workdir, "summary.json"))
