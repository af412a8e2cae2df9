"""Cross-silo FAST on Flower's Deployment Engine: each site keeps its data.

    flower-superlink --insecure --port 9091 --disable-runtime-dependency-installation
    flower-supernode --insecure --superlink HOST:9091 \
        --node-config "partition-id=0 num-partitions=2 data-folder='/data/site0'"
    flwr run fastjax/deploy <connection> --stream --run-config "config='/abs/configs/demo.py'"

Modules: `site` (what one site does in each phase: preliminary pass, refinement,
local update; no Flower import), `server` (the three phases over a transport, the
rounds, checkpoints and failure handling; `LocalTransport` runs sites in-process),
`payload` (flat messages and their bytes), `records` / `client_app` / `server_app`
(Flower's RecordDict, ClientApp and ServerApp), `status` (a run's outcome for scripts:
`python -m fastjax.deploy.status WORKDIR` exits 0 only when it is done). `pyproject.toml`
in this folder is the Flower App that `flwr run` bundles (components only; every machine
installs fastjax).
"""
