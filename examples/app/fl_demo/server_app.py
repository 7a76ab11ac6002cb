"""ServerApp: FedAvg over the SuperNodes, logging where each node trained and how fast.

Log lines a test or an operator can read from `flwr run --stream` / `flwr log`:
    fl-demo round 1 node 123: device=cpu (cpu) samples/s=51234 ...
    fl-demo result: rounds=2 train-loss=0.41 eval-accuracy=0.93 devices=cpu
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fl_demo.task import make_model

LOG = logging.getLogger("flwr")

app = ServerApp()


class DeviceReportingFedAvg(FedAvg):
    """FedAvg that logs each reply's device record before aggregating."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.devices: set[str] = set()

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        for reply in replies:
            if reply.has_content() and "device" in reply.content:
                self._log_device(server_round, reply)
        return super().aggregate_train(server_round, replies)

    def _log_device(self, server_round: int, reply: Message) -> None:
        info = reply.content["device"]
        metrics = reply.content["metrics"]
        self.devices.add(str(info["device"]))
        LOG.info(
            "fl-demo round %d node %s: device=%s (%s) samples/s=%.0f train-loss=%.4f; %s; %s",
            server_round,
            reply.metadata.src_node_id,
            info["device"],
            info["device-name"],
            metrics["samples-per-s"],
            metrics["train-loss"],
            info["reason"],
            info["memory-limit"],
        )


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    rounds = int(config["num-server-rounds"])
    nodes = int(config["min-nodes"])
    strategy = DeviceReportingFedAvg(
        min_train_nodes=nodes, min_evaluate_nodes=nodes, min_available_nodes=nodes
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(make_model().state_dict()),
        num_rounds=rounds,
        train_config=ConfigRecord({"lr": float(config["learning-rate"])}),
    )
    train = result.train_metrics_clientapp.get(rounds, {})
    evaluation = result.evaluate_metrics_clientapp.get(rounds, {})
    LOG.info(
        "fl-demo result: rounds=%d train-loss=%.4f eval-accuracy=%.4f samples/s=%.0f devices=%s",
        rounds,
        train.get("train-loss", float("nan")),
        evaluation.get("eval-accuracy", float("nan")),
        train.get("samples-per-s", float("nan")),
        ",".join(sorted(strategy.devices)) or "none",
    )
