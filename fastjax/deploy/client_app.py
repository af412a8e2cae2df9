"""The Flower ClientApp of a FAST site: each message runs one phase of
`fastjax.deploy.site` with this SuperNode's node config (`NodeConfig`)."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fastjax.deploy import site
from fastjax.deploy.records import from_records, to_records

app = ClientApp()


def _run(phase: str, msg: Message, context: Context) -> Message:
    node = site.NodeConfig.from_mapping(context.node_config)
    reply = site.handle(phase, from_records(msg.content), node)
    return Message(to_records(reply), reply_to=msg)


@app.query("preliminary")
def preliminary(msg: Message, context: Context) -> Message:
    return _run("preliminary", msg, context)


@app.query("refine")
def refine(msg: Message, context: Context) -> Message:
    return _run("refine", msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _run("train", msg, context)
