"""Hybrid training: a small real torch model on sklearn digits, charged simulated time.

The accuracy curve is real (synchronous SGD over the simulated workers' data shards); the
time axis is the simulated time of the *named* model's gradient traffic (e.g. ResNet-50)
on the simulated WAN, so curves compare planners as the NetStorm paper's figure does.
torch and scikit-learn are imported here only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .result import SimResult

__all__ = ["train_digits"]


def train_digits(result: SimResult, *, seed: int = 0, batch: int = 32, lr: float = 0.1,
                 eval_every: int = 1) -> dict[str, Any]:
    """Train an MLP on sklearn's digits for ``len(result.iteration_s)`` synchronous steps.

    Parameters
    ----------
    result
        A simulation; iteration i is charged ``result.iteration_s[i]`` seconds, and every
        worker site of the run (``result.workers``) trains on its own shard of the data.
    batch
        Per-worker batch size.

    Returns
    -------
    dict
        ``{"planner", "time_s": [...], "accuracy": [...], "iterations": [...]}`` with the
        test accuracy after every ``eval_every`` iterations (and before the first).

    Notes
    -----
    Every worker draws its batch from its own shard of the training set and computes a
    gradient; the update applies the mean of the workers' gradients (what the all-reduce
    delivers), so the curve depends on the iteration count only, and the planner changes
    only the time axis.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-64-10 MLP: intra-op threads only spin (and oversubscribe)
    try:
        return _train(result, seed=seed, batch=batch, lr=lr, eval_every=eval_every)
    finally:
        torch.set_num_threads(threads)


def _train(result: SimResult, *, seed: int, batch: int, lr: float,
           eval_every: int) -> dict[str, Any]:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed,
                                          stratify=y)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 10))
    workers = len(result.workers) or len(result.sites)
    shards = np.array_split(np.random.default_rng(seed).permutation(len(xtr)), workers)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    xe, ye = torch.from_numpy(xte), torch.from_numpy(yte)
    params = list(model.parameters())

    def accuracy() -> float:
        with torch.no_grad():
            return float((model(xe).argmax(dim=1) == ye).float().mean())

    times, accs, its = [0.0], [accuracy()], [0]
    clock = 0.0
    for i, seconds in enumerate(result.iteration_s.tolist()):
        grads = [torch.zeros_like(p) for p in params]
        for shard in shards:
            idx = torch.from_numpy(shard)[torch.randint(len(shard), (batch,), generator=gen)]
            model.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            for g, p in zip(grads, params, strict=True):
                assert p.grad is not None  # every parameter takes part in the loss
                g += p.grad
        with torch.no_grad():
            for g, p in zip(grads, params, strict=True):
                p.sub_(lr * g / len(shards))
        clock += seconds
        if (i + 1) % eval_every == 0 or i + 1 == len(result.iteration_s):
            times.append(clock)
            accs.append(accuracy())
            its.append(i + 1)
    return {"planner": result.planner, "time_s": times, "accuracy": accs, "iterations": its}
