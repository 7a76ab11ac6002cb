"""Model, data and training loop shared by the ClientApp, the ServerApp and bench/gpu_train.py.

The data is generated, never downloaded: NUM_CLASSES Gaussian clusters in NUM_FEATURES
dimensions whose centres are the same on every node (seed 0), while each partition draws its
own samples from a generator seeded with its partition-id. Same partition-id, same data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NUM_FEATURES = 64
NUM_CLASSES = 8
HIDDEN = 256
TEST_SHARE = 0.2


def make_model() -> nn.Module:
    """A small MLP: big enough that a GPU helps at large batch sizes, small enough for CI."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(NUM_FEATURES, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, NUM_CLASSES),
    )


@dataclass(frozen=True)
class Partition:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_partition(partition_id: int, samples: int) -> Partition:
    """The partition's samples, identical for the same (partition_id, samples)."""
    centres = torch.randn(NUM_CLASSES, NUM_FEATURES, generator=_gen(0)) * 0.3
    gen = _gen(1 + partition_id)
    labels = torch.randint(0, NUM_CLASSES, (samples,), generator=gen)
    features = centres[labels] + torch.randn(samples, NUM_FEATURES, generator=gen)
    cut = int(samples * (1 - TEST_SHARE))
    return Partition(features[:cut], labels[:cut], features[cut:], labels[cut:])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class TrainResult:
    loss: float
    samples: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    device: str,
    epochs: int,
    batch_size: int,
    lr: float,
    loader_workers: int = 0,
) -> TrainResult:
    """Plain SGD over shuffled mini-batches; throughput counts samples seen per second.

    loader_workers > 0 feeds the batches through a torch DataLoader with that many worker
    processes, as real training does: the workers hand batches over in shared memory
    (/dev/shm), so a container with Docker's 64 MB default fails here ("bus error",
    "insufficient shared memory") the way a real ClientApp would.
    """
    model.to(device)
    model.train()
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(epochs)
    total, seen = torch.zeros((), device=device), 0
    _sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in _batches(x, y, batch_size, order, loader_workers, device):
            optimiser.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimiser.step()
            total += loss.detach() * len(yb)
            seen += len(yb)
    _sync(device)
    seconds = time.perf_counter() - start
    return TrainResult(float(total) / max(seen, 1), seen, seconds)


def _batches(x, y, batch_size: int, order: torch.Generator, workers: int, device: str):
    """One epoch's shuffled mini-batches, on `device`."""
    if workers <= 0:
        xd, yd = x.to(device), y.to(device)
        perm = torch.randperm(len(x), generator=order).to(device)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            yield xd[idx], yd[idx]
        return
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=batch_size,
        shuffle=True,
        generator=order,
        num_workers=workers,
        pin_memory=device.startswith("cuda"),
    )
    for xb, yb in loader:
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: str
) -> tuple[float, float]:
    """(loss, accuracy) on the given samples."""
    model.to(device)
    model.eval()
    with torch.no_grad():
        logits = model(x.to(device))
        target = y.to(device)
        loss = nn.functional.cross_entropy(logits, target).item()
        accuracy = (logits.argmax(dim=1) == target).float().mean().item()
    return loss, accuracy


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
