"""The order of a training epoch: a pure function of the seed, the epoch, the
selection and the window, cut into contiguous blocks per data-parallel rank.

Shards are put in a seeded order and the selected rows of ``window``
consecutive shards pooled and permuted (:func:`epoch_order`); each rank gets a
contiguous block of that order (:func:`rank_batches`), so it reads mostly its
own shards.
"""

from __future__ import annotations

import numpy as np

__all__ = ["epoch_order", "rank_batches"]

# The shard order is drawn again (from the same generator) while its rank
# correlation with the storage order is above this, so a small store's epoch
# is not, by chance, close to reading it front to back.
_MAX_ORDER_CORRELATION = 0.05
_ORDER_TRIES = 64


def epoch_order(shards: np.ndarray, *, seed: int, epoch: int, window: int) -> np.ndarray:
    """The order of one epoch: a permutation of ``range(len(shards))``.

    Parameters
    ----------
    shards : (N,) ndarray of int
        The shard of each selected row, in the selection's order.
    seed, epoch : int
        The order is a pure function of them and of ``shards`` and ``window``.
    window : int
        Shards pooled together: the shards are put in a seeded order, and the
        rows of each ``window`` consecutive shards of it are permuted among
        themselves (WebDataset's shard shuffle plus a shuffle buffer, made
        exact and seekable).

    Returns
    -------
    order : (N,) ndarray of int64
        Indices into the selection.
    """
    shards = np.asarray(shards)
    n = len(shards)
    rng = np.random.default_rng([seed, epoch])
    unique, inverse = np.unique(shards, return_inverse=True)
    position = np.arange(n, dtype=np.float64)
    best, best_rho = None, np.inf
    for _ in range(_ORDER_TRIES):
        perm = rng.permutation(len(unique))
        rank_of_shard = np.empty(len(unique), np.int64)
        rank_of_shard[perm] = np.arange(len(unique))
        window_of_row = rank_of_shard[inverse] // window
        if window_of_row.min() == window_of_row.max():
            best = window_of_row
            break
        rho = abs(float(np.corrcoef(window_of_row, position)[0, 1]))
        if rho < best_rho:
            best, best_rho = window_of_row, rho
        if rho <= _MAX_ORDER_CORRELATION:
            break
    within = rng.random(n)
    return np.lexsort((within, best)).astype(np.int64)


def rank_batches(
    n: int, *, batch_size: int, rank: int, world_size: int, drop_last: bool
) -> np.ndarray:
    """``(start, stop)`` in the epoch order of each batch of ``rank``.

    Each rank gets a contiguous block of the order. Without ``drop_last`` the
    blocks cover every row once (sizes differ by at most one row, the last
    batch of a rank may be short); with it every rank gets the same number of
    full batches and the rows after them are left out this epoch.
    """
    if drop_last:
        per = (n // world_size) // batch_size * batch_size
        lo, hi = rank * per, (rank + 1) * per
    else:
        lo, hi = n * rank // world_size, n * (rank + 1) // world_size
    starts = np.arange(lo, hi, batch_size, dtype=np.int64)
    return np.stack([starts, np.minimum(starts + batch_size, hi)], axis=1).reshape(-1, 2)
