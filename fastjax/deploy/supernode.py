r"""A Flower SuperNode whose site stays warm between messages (flwr 1.42.0 only).

    python -m fastjax.deploy.supernode --insecure --superlink HOST:9091 --port 9094 \
        --node-config "partition-id=0 num-partitions=2 workdir='/srv/fastjax'"

takes `flower-supernode`'s arguments and runs Flower's own SuperNode with
`--isolation process`, with two changes that make a round take a fraction of a second
instead of seconds (benchmarks/RESULTS.md section 7.1):

- a site worker (a thread of this process) takes the SuperNode's tasks from its Runtime
  API and runs each in this process, as `flwr-clientapp` does for one task before it
  exits: Flower, JAX and fastjax are imported once, not once per message, and the site's
  compiled local update stays in memory. The message, the reply and the task's status go
  through the same Runtime API calls `flwr-clientapp` makes;
- Flower's fixed waits are shortened: the SuperNode looks for new work every 0.1 s while
  idle (flwr 1.42: `time.sleep(3)` in `start_client_internal`) and for a reply every
  0.05 s (0.5 s), and a message part that is not there yet (the SuperNode offers a task
  while it still pulls the message's content from the SuperLink) is asked for again after
  0.02 s, doubling, not after 1 s.

Both reach into flwr 1.42.0's internals, so any other flwr version is refused; use
`flower-supernode` there (same arguments, slower rounds).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
import types

FLWR_VERSION = "1.42.0"
IDLE_S = 0.1  # between pulls from the SuperLink while idle (Flower: 3 s)
REPLY_POLL_S = 0.05  # between looks for the ClientApp's reply (Flower: 0.5 s)
PULL_BACKOFF_S = 0.02  # first retry of a message part not yet there (Flower: 1 s, doubling)


def check_flwr_version(version: str) -> None:
    if version != FLWR_VERSION:
        raise SystemExit(f"fastjax.deploy.supernode patches flwr {FLWR_VERSION}'s SuperNode, but flwr "
                         f"{version} is installed; pip install flwr=={FLWR_VERSION}, or start the site "
                         "with flower-supernode and the same arguments (slower rounds)")


def shorten_pull_backoff() -> bool:
    """Ask again for a message part that is not there yet after PULL_BACKOFF_S, doubling
    (flwr 1.42: 1 s). A SuperNode offers a task, and the SuperLink a reply, while the
    content is still on its way, so the first ask often misses. flwr 1.42.0 only (False
    and nothing changed on another version): this process's pulls, site or server."""
    import flwr
    from flwr.supercore.inflatable import inflatable_utils

    if flwr.__version__ != FLWR_VERSION:
        return False
    for pull in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        pull.__kwdefaults__["initial_backoff"] = PULL_BACKOFF_S
    return True


def _runtime_address(args: list[str]) -> str:
    """Where this SuperNode serves its Runtime API (its --host and --port)."""
    from flwr.supercore.constant import SUPERNODE_UVICORN_DEFAULT_PORT, UVICORN_DEFAULT_HOST

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--host", default=UVICORN_DEFAULT_HOST)
    p.add_argument("--port", type=int, default=SUPERNODE_UVICORN_DEFAULT_PORT)
    known, _ = p.parse_known_args(args)
    host = "127.0.0.1" if known.host in ("0.0.0.0", "") else known.host
    return f"[{host}]:{known.port}" if ":" in host else f"{host}:{known.port}"


def _short_sleep(seconds: float) -> None:
    time.sleep(IDLE_S if seconds >= 1 else min(seconds, REPLY_POLL_S))


def _run_task(address: str, token: str, apps: dict) -> None:
    """One task, as flwr 1.42's `run_clientapp` runs it, without leaving the process:
    pull the message, context, run and FAB; run the ClientApp (loaded once per FAB);
    push the reply (an Error message if the app raised) and the task's status."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore import log
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime import run_clientapp as rc

    client = RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                      RuntimeTokenHttpInterceptor(token)],
        retry_invoker=make_simple_http_retry_invoker())
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context, status, details = None, SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        message, context, run, fab = rc.pull_task_input(client)
        try:
            if fab.hash_str not in apps:
                install_from_fab(fab.content, skip_prompt=True)
                apps[fab.hash_str] = get_load_client_app_fn("", None, multi_app=True)(
                    run.fab_id, run.fab_version, fab.hash_str)
            reply = apps[fab.hash_str](message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # noqa: BLE001 - reported to the server, as flwr-clientapp does
            log(logging.ERROR, "ClientApp raised an exception", exc_info=ex)
            details = f"{type(ex)}:<'{ex}'>"
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                            reply_to=message)
        rc.push_message(client, reply, context)
    finally:
        rc.push_task_output(client=client, context=context, sub_status=status, details=details)
        heartbeat.stop()
        client.close()


def serve(address: str, stop: threading.Event | None = None) -> None:
    """Take this SuperNode's ClientApp tasks one after another and run them here."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
    from flwr.supercore import log
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    stop = stop or threading.Event()
    client = RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker())
    apps: dict = {}
    while not stop.is_set():
        try:
            res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
            if res.HasField("task") and res.token:
                _run_task(address, res.token, apps)
                continue
        except Exception as ex:  # noqa: BLE001 - the Runtime API is not up yet, or went away
            log(logging.WARNING, "fastjax site worker: %s; retrying", ex)
            stop.wait(1.0)
        stop.wait(REPLY_POLL_S)


def main(argv: list[str] | None = None) -> None:
    import flwr

    check_flwr_version(flwr.__version__)
    args = list(sys.argv[1:] if argv is None else argv)
    refused = [a for a in args if a.split("=")[0] in ("--isolation", "--ssl-certfile", "--ssl-keyfile",
                                                      "--ssl-ca-certfile")]
    if refused:
        raise SystemExit(f"fastjax.deploy.supernode does not take {refused[0].split('=')[0]}: it runs "
                         "each task in this process, talking plain HTTP to its own Runtime API; use "
                         "flower-supernode for other isolation modes or a TLS Runtime API")
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli.flower_supernode import flower_supernode

    if {"-h", "--help"} & set(args):  # ours, then Flower's arguments
        print(__doc__)
        sys.argv = ["flower-supernode", "--help"]
        return flower_supernode()

    fast_time = {k: getattr(time, k) for k in dir(time) if not k.startswith("_")}
    start_client_internal.time = types.SimpleNamespace(**fast_time | {"sleep": _short_sleep})
    shorten_pull_backoff()
    threading.Thread(target=serve, args=(_runtime_address(args),), name="fastjax-site", daemon=True).start()
    sys.argv = ["flower-supernode", *args, "--isolation", "process"]
    flower_supernode()


if __name__ == "__main__":
    main()
