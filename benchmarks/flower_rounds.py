"""Seconds per FL round: FAST across two Flower SuperNodes on 127.0.0.1 against the same
config in one process (`python -m fastjax.main`), and where a Flower round's time goes.

    .venv/bin/python benchmarks/flower_rounds.py --rounds 8 --out runs/flower_rounds

Runs of configs/demo.py with two clients (a small subset by default, see --train): the
one-process job, then Flower (--modes): `default`, Flower's own polling (the server's
Grid.send_and_receive checks for replies every 3 s, each SuperNode's SuperExec looks for
work every 1 s); `fast`, fastjax's (run config poll=0.05,
FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.1); `warm`, fastjax's polling and fastjax's SuperNode
(`python -m fastjax.deploy.supernode`: one long-lived process per site, Flower's fixed
waits shortened). Each row is the median of rounds 2..R (round 1 compiles). Then the
fixed costs of one message on a site with `flower-supernode`: a fresh `flwr-clientapp`
process per message, which imports Flower, JAX and fastjax and reads the compiled local
update from the disk cache before it trains. Writes <out>/flower_rounds.json and prints
a table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent


def _median_seconds(workdir: pathlib.Path) -> float:
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return statistics.median(r["seconds"] for r in rows[1:] or rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _flower(out: pathlib.Path, overrides: str, server_poll: float, exec_poll: float,
            warm: bool = False) -> float:
    """One `flwr run` on a fresh SuperLink + 2 SuperNodes (Flower's `flower-supernode`,
    or fastjax's warm `python -m fastjax.deploy.supernode`); median seconds per round."""
    supernode = ([sys.executable, "-m", "fastjax.deploy.supernode"] if warm
                 else [str(BIN / "flower-supernode")])
    link, nodes = _free_port(), [_free_port(), _free_port()]
    env = dict(os.environ, FLWR_HOME=str(out / "flwr-home"), JAX_PLATFORMS="cpu",
               FLWR_SUPEREXEC_TASK_POLL_INTERVAL=str(exec_poll),
               PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    (out / "flwr-home").mkdir(parents=True, exist_ok=True)
    (out / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n[superlink.local]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
    procs = []
    try:
        procs.append(subprocess.Popen([str(BIN / "flower-superlink"), "--insecure", "--port", str(link),
                                       "--disable-runtime-dependency-installation"], env=env,
                                      stdout=open(out / "superlink.log", "w"), stderr=subprocess.STDOUT,
                                      start_new_session=True))
        deadline = time.monotonic() + 60
        while not _listening(link):  # the SuperLink is up
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise SystemExit(f"the SuperLink did not start; see {out / 'superlink.log'}")
            time.sleep(0.5)
        for k, port in enumerate(nodes):
            procs.append(subprocess.Popen(
                [*supernode, "--insecure", "--superlink", f"127.0.0.1:{link}",
                 "--port", str(port), "--node-config",
                 f"partition-id={k} num-partitions=2 workdir='{out / f'site{k}'}'"], env=env,
                stdout=open(out / f"site{k}.log", "w"), stderr=subprocess.STDOUT, start_new_session=True))
        rc = (f"config='{ROOT / 'configs' / 'demo.py'}' overrides='partition.num_clients=2 {overrides}' "
              f"workdir='{out / 'server'}' poll={server_poll} wait-nodes=120")
        run = subprocess.run([str(BIN / "flwr"), "run", str(ROOT / "fastjax" / "deploy"), "local", "--stream",
                              "--run-config", rc], env=env, capture_output=True, text=True, timeout=3600)
        (out / "flwr_run.log").write_text(run.stdout + run.stderr)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
    path = out / "server" / "status.json"
    status = json.loads(path.read_text()) if path.exists() else {"status": "none", "log": str(out)}
    if status["status"] != "done":
        raise SystemExit(f"flower run in {out} did not finish: {status}")
    return _median_seconds(out / "server")


def _message_costs(site_dir: pathlib.Path) -> dict:
    """A fresh process's imports (Flower's ClientApp runtime, JAX, fastjax's site), and
    the local update of one site's stored training set (compiled program from the cache)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import flwr.supernode.runtime.run_clientapp, "
                    "fastjax.deploy.client_app, jax.numpy, fastjax.config, fastjax.federate.local"],
                   check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    imports = time.perf_counter() - t0
    code = (
        "import time, json, numpy as np; t0 = time.perf_counter()\n"
        "from fastjax.deploy import site, payload as pl; from fastjax.federate import models\n"
        f"cfg = pl.config_from_json(open({str(site_dir.parent / 'server' / 'config.json')!r}).read())\n"
        f"node = site.NodeConfig(0, 2, workdir={str(site_dir)!r})\n"
        "sig = str(np.load(node.site_dir / site.TRAIN_SET)['signature'])\n"
        "v = models.init_variables(models.make_model(cfg.model.name, 10), (1280,), 0)\n"
        "msg = {'config': pl.config_to_json(cfg), 'signature': sig, 'round': 1, 'lr': 0.05,\n"
        "       'num_classes': 10, **pl.flatten(v, 'vars')}\n"
        "t1 = time.perf_counter(); site.handle('train', msg, node); t2 = time.perf_counter()\n"
        "site.handle('train', msg, node); t3 = time.perf_counter()\n"
        "print(json.dumps({'first_train_s': t2 - t1, 'warm_train_s': t3 - t2}))\n")
    run = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    return {"imports_s": imports, **json.loads(run.stdout.strip().splitlines()[-1])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8, help="FL rounds per run (default 8)")
    p.add_argument("--train", type=int, default=1000, help="data.train_limit (default 1000)")
    p.add_argument("--image-size", type=int, default=32, help="encoder.image_size (default 32)")
    p.add_argument("--out", default="runs/flower_rounds", help="output folder (default runs/flower_rounds)")
    p.add_argument("--modes", default="default,fast,warm",
                   help="Flower runs, comma-separated, of default (Flower's polling), fast (fastjax's "
                        "polling), warm (fastjax's SuperNode: one process per site, short waits); "
                        "default: all three")
    a = p.parse_args(argv)
    if not a.modes or set(a.modes.split(",")) - {"default", "fast", "warm"}:
        p.error(f"--modes {a.modes!r}: a comma-separated subset of default,fast,warm please")
    if a.rounds < 2 or a.train < 100 or a.image_size < 16:
        p.error("--rounds >= 2, --train >= 100 and --image-size >= 16 please")
    out = pathlib.Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    over = {"data.train_limit": a.train, "data.test_limit": 500, "encoder.image_size": a.image_size,
            "train.rounds": a.rounds, "train.eval_every": 1, "train.checkpoint_every": 0}
    sim = out / "one_process"
    subprocess.run([sys.executable, "-m", "fastjax.main", "--config", str(ROOT / "configs" / "demo.py"),
                    "--workdir", str(sim), "--config.partition.num_clients=2",
                    *[f"--config.{k}={v}" for k, v in over.items()]],
                   check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True)
    flat = " ".join(f"{k}={v}" for k, v in over.items())
    runs = {"default": ("Flower, Flower's polling (3 s / 1 s)", 3.0, 1.0, False),
            "fast": ("Flower, fastjax's polling (0.05 s / 0.1 s)", 0.05, 0.1, False),
            "warm": ("Flower, fastjax's warm SuperNode (fastjax.deploy.supernode)", 0.05, 0.1, True)}
    rows, workdirs = {"one process (fastjax.main)": _median_seconds(sim)}, {"one process (fastjax.main)": sim}
    for mode in a.modes.split(","):
        name, server_poll, exec_poll, warm = runs[mode]
        rows[name] = _flower(out / f"flower_{mode}", flat, server_poll, exec_poll, warm)
        workdirs[name] = out / f"flower_{mode}" / "server"
    each = {name: [round(json.loads(line)["seconds"], 4) for line in open(w / "metrics.jsonl")]
            for name, w in workdirs.items()}
    costs = _message_costs(out / f"flower_{mode}" / "site0")
    import flwr
    import jax

    record = {"seconds_per_round": rows, "each_round_seconds": each, "site_message": costs, "rounds": a.rounds, "train": a.train,
              "image_size": a.image_size, "device": f"{os.cpu_count()}-core CPU",
              "load_average": os.getloadavg(), "versions": {"jax": jax.__version__, "flwr": flwr.__version__},
              "date": time.strftime("%Y-%m-%d")}
    (out / "flower_rounds.json").write_text(json.dumps(record, indent=2) + "\n")
    base = rows["one process (fastjax.main)"]
    print(f"| run | s / round (median of rounds 2-{a.rounds}) | x one process |\n| --- | --- | --- |")
    for name, sec in rows.items():
        print(f"| {name} | {sec:.3f} | {sec / base:.0f}x |")
    print(f"\none site message in a fresh process: imports {costs['imports_s']:.2f} s, local update "
          f"{costs['first_train_s']:.2f} s (first, cached compile) / {costs['warm_train_s']:.3f} s (warm); "
          f"jax {jax.__version__}, flwr {flwr.__version__}, {record['device']}, load {record['load_average'][0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
