"""A plain PyTorch VAE in the style of PyTorch's official example (examples/vae/main.py).

Eager mode, a DataLoader over the training tensor (or, in :func:`reference_epochs_in_memory`,
batches sliced from it by a permutation), fc 784-400-(20, 20) / 20-400-784, the
loss BCE(sum) + KL with ``exp(0.5 * logvar)`` scales, Adam. Written without vaelab, so that
benchmarks compare vaelab with what a user would write by hand. Dynamic binarization is a
``torch.bernoulli`` of each batch, as is usual for MNIST VAEs.
"""

from __future__ import annotations

import math
import time
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class ReferenceVAE(nn.Module):
    def __init__(self, x_dim: int = 784, hidden: int = 400, z_dim: int = 20) -> None:
        super().__init__()
        self.fc1 = nn.Linear(x_dim, hidden)
        self.fc21 = nn.Linear(hidden, z_dim)
        self.fc22 = nn.Linear(hidden, z_dim)
        self.fc3 = nn.Linear(z_dim, hidden)
        self.fc4 = nn.Linear(hidden, x_dim)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode_logits(self, z):
        return self.fc4(F.relu(self.fc3(z)))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode_logits(z), mu, logvar


def loss_function(logits, x, mu, logvar):
    bce = F.binary_cross_entropy_with_logits(logits, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld, bce, kld


def reference_epochs(x_train: torch.Tensor, *, epochs: int = 30, batch_size: int = 128, lr: float = 1e-3,
                     seed: int = 0, binarize: bool = True) -> Iterator[tuple[ReferenceVAE, float]]:
    """Train on ``x_train`` [N, 784] in [0, 1], yielding the model and the seconds of each epoch
    (so that a benchmark can interleave it with another loop)."""
    torch.manual_seed(seed)
    model = ReferenceVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loader = DataLoader(TensorDataset(x_train), batch_size=batch_size, shuffle=True)
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for (data,) in loader:
            if binarize:
                data = torch.bernoulli(data)
            optimizer.zero_grad()
            logits, mu, logvar = model(data)
            loss, _, _ = loss_function(logits, data, mu, logvar)
            loss.backward()
            optimizer.step()
        yield model, time.perf_counter() - t0


def reference_model(seed: int = 0) -> ReferenceVAE:
    """The initial model of a reference loop run with ``seed``: ``torch.manual_seed(seed)`` then
    ``ReferenceVAE()``, as :func:`reference_epochs` and :func:`reference_epochs_in_memory` begin
    (here in a forked RNG, so the caller's random state is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ReferenceVAE()


def reference_epochs_in_memory(x_train: torch.Tensor, *, epochs: int = 30, batch_size: int = 128,
                               lr: float = 1e-3, seed: int = 0,
                               binarize: bool = True) -> Iterator[tuple[ReferenceVAE, float]]:
    """:func:`reference_epochs` without the DataLoader: each epoch one ``torch.randperm`` and
    batches gathered from the training tensor ``x_train`` [N, 784] by index, a
    ``torch.bernoulli`` of each batch; the same model, initial weights, loss and Adam. Yields
    the model and the seconds of each epoch."""
    torch.manual_seed(seed)
    model = ReferenceVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = x_train.shape[0]
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n)
        for i in range(0, n, batch_size):
            data = x_train[perm[i : i + batch_size]]  # [B, 784]
            if binarize:
                data = torch.bernoulli(data)
            optimizer.zero_grad()
            logits, mu, logvar = model(data)
            loss, _, _ = loss_function(logits, data, mu, logvar)
            loss.backward()
            optimizer.step()
        yield model, time.perf_counter() - t0


def train_reference(x_train: torch.Tensor, *, epochs: int = 30, batch_size: int = 128, lr: float = 1e-3,
                    seed: int = 0, binarize: bool = True) -> tuple[ReferenceVAE, float]:
    """Train on ``x_train`` [N, 784] in [0, 1]; returns the model and the seconds spent training."""
    seconds = 0.0
    for model, s in reference_epochs(x_train, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                     binarize=binarize):
        seconds += s
    return model, seconds


@torch.no_grad()
def reference_elbo(model: ReferenceVAE, x: torch.Tensor) -> dict[str, float]:
    """Test ELBO and its terms (nats per example), one posterior sample."""
    logits, mu, logvar = model(x)
    _, bce, kld = loss_function(logits, x, mu, logvar)
    n = x.shape[0]
    return {"elbo": -(bce + kld).item() / n, "reconstruction": -bce.item() / n, "kl": kld.item() / n}


@torch.no_grad()
def reference_log_px(model: ReferenceVAE, x: torch.Tensor, k: int = 1000, batch: int = 100) -> tuple[float, float]:
    """Importance-sampled log p(x), written out by hand: mean and standard error over examples."""
    out = []
    for i in range(0, x.shape[0], batch):
        xb = x[i : i + batch].view(-1, 784)
        mu, logvar = model.encode(xb)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn(k, *mu.shape)
        z = mu + std * eps  # [K, B, D]
        log_q = (-0.5 * eps**2 - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        logits = model.decode_logits(z)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, xb.expand_as(logits), reduction="none").sum(-1)
        lw = (log_px_z + log_pz - log_q).double()
        out.append(torch.logsumexp(lw, 0) - math.log(k))
    ll = torch.cat(out)
    return ll.mean().item(), (ll.std() / math.sqrt(ll.numel())).item()
