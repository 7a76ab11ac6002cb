"""The reference app's task (examples/app/fl_demo/task.py): data from partition-id, training."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "app"))

from fl_demo.task import NUM_CLASSES, evaluate, load_partition, make_model, train


def test_same_partition_same_data_other_partition_other_data():
    a, b, c = load_partition(3, 512), load_partition(3, 512), load_partition(4, 512)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert len(a.x_train) + len(a.x_test) == 512
    assert set(a.y_train.tolist()) == set(range(NUM_CLASSES))


def test_initial_model_is_deterministic():
    first, second = make_model().state_dict(), make_model().state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_training_learns_and_reports_throughput():
    data = load_partition(0, 2048)
    model = make_model()
    _, before = evaluate(model, data.x_test, data.y_test, device="cpu")
    result = train(
        model, data.x_train, data.y_train, device="cpu", epochs=2, batch_size=64, lr=0.05
    )
    _, after = evaluate(model, data.x_test, data.y_test, device="cpu")
    assert after > before + 0.3
    assert result.samples == 2 * len(data.x_train)
    assert result.samples_per_s > 0 and math.isfinite(result.loss)


def test_dataloader_workers_train_through_shared_memory():
    """Worker processes hand batches over in /dev/shm; the result matches the in-process path."""
    data = load_partition(0, 2048)
    model = make_model()
    result = train(
        model,
        data.x_train,
        data.y_train,
        device="cpu",
        epochs=2,
        batch_size=64,
        lr=0.05,
        loader_workers=2,
    )
    _, accuracy = evaluate(model, data.x_test, data.y_test, device="cpu")
    assert accuracy > 0.5 and result.samples == 2 * len(data.x_train)
