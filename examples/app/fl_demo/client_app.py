"""ClientApp: trains on the node's generated partition, on the GPU when the agent allows one.

Every reply carries, besides the arrays and the MetricRecord FedAvg aggregates, a ConfigRecord
"device" saying where it ran (`device`, `device-name`, `reason`, `memory-limit`), which the
ServerApp logs per node: the answer to "did my node really use the GPU?".
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from agent.clientapp import DeviceChoice, MemoryLimit, apply_memory_limit, select_device
from fl_demo.task import evaluate, load_partition, make_model, train

app = ClientApp()


def _setup(msg: Message, context: Context):
    choice = select_device()
    limit = apply_memory_limit(choice)
    model = make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    partition_id = int(context.node_config.get("partition-id", 0))
    data = load_partition(partition_id, int(context.run_config["samples-per-partition"]))
    return choice, limit, model, data


def _device_record(choice: DeviceChoice, limit: MemoryLimit) -> ConfigRecord:
    return ConfigRecord(
        {
            "device": choice.kind,
            "device-name": choice.name,
            "reason": choice.reason,
            "memory-limit": limit.detail,
        }
    )


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    choice, limit, model, data = _setup(msg, context)
    result = train(
        model,
        data.x_train,
        data.y_train,
        device=choice.torch_device,
        epochs=int(context.run_config["local-epochs"]),
        batch_size=int(context.run_config["batch-size"]),
        lr=float(msg.content["config"]["lr"]),
        loader_workers=int(context.run_config.get("loader-workers", 0)),
    )
    metrics = MetricRecord(
        {
            "train-loss": result.loss,
            "samples-per-s": result.samples_per_s,
            "gpu": int(choice.is_gpu),
            "num-examples": len(data.x_train),
        }
    )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    content = RecordDict(
        {"arrays": ArrayRecord(state), "metrics": metrics, "device": _device_record(choice, limit)}
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    choice, _limit, model, data = _setup(msg, context)
    loss, accuracy = evaluate(model, data.x_test, data.y_test, device=choice.torch_device)
    metrics = MetricRecord(
        {"eval-loss": loss, "eval-accuracy": accuracy, "num-examples": len(data.x_test)}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
