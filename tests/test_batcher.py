"""The service's batcher on its own: steady clients are served in full batches, and a lone client
never waits for company (service/batcher.py)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from clair_vec.service.batcher import Batcher


def _clients(batcher: Batcher, clients: int, rounds: int, turnaround: float) -> list[int]:
    """``clients`` that each search ``rounds`` times, taking ``turnaround`` between an answer and
    their next search (reading it, sending again); returns the size of every batch that ran."""
    sizes: list[int] = []
    real = batcher.run

    def run(items):
        sizes.append(len(items))
        return real(items)

    async def client(n: int) -> None:
        for r in range(rounds):
            assert await batcher.submit((n, r)) == (n, r)  # each gets its own answer
            await asyncio.sleep(turnaround * (1 + n / clients))  # some come back sooner than others

    async def go() -> None:
        await asyncio.gather(*(client(n) for n in range(clients)))

    batcher.run = run
    try:
        asyncio.run(go())
    finally:
        batcher.run = real  # the next call of this helper counts its own batches only
    return sizes


@pytest.fixture
def executor():
    with ThreadPoolExecutor(1) as pool:
        yield pool


def _batcher(executor, share: float, run_s: float) -> Batcher:
    def run(items):
        time.sleep(run_s)  # a CLIP pass
        return items

    return Batcher(run, executor, max_batch=16, max_wait=0.002, max_pending=64, wait_share=share)


@pytest.mark.parametrize("share", [0.0, 0.25])
def test_steady_clients_are_served_in_full_batches_only_when_the_batcher_waits_for_them(share, executor):
    # 16 clients, a batch takes 0.4 s, a client takes 20-40 ms to come back: 100 ms is a quarter of it
    sizes = _clients(_batcher(executor, share, 0.4), clients=16, rounds=5, turnaround=0.02)
    assert sum(sizes) == 80
    if share:
        assert sizes == [16] * 5  # every client's next search joins the others'
    else:  # the first batch is full; the first client back finds the worker idle and takes it alone
        assert sizes[0] == 16 and max(sizes[1:]) < 16


def test_a_lone_client_never_waits_and_a_burst_is_forgotten(executor):
    batcher = _batcher(executor, 0.25, 0.05)
    _clients(batcher, clients=1, rounds=5, turnaround=0.01)
    assert batcher.waits == 0
    _clients(batcher, clients=16, rounds=2, turnaround=0.0)
    batcher.waits = 0
    t0 = time.perf_counter()
    _clients(batcher, clients=1, rounds=4, turnaround=0.01)
    # right after the burst, the lone client waits for the others while they could still come back:
    # until a quarter of the last batch's time after it ended, 12.5 ms of a 50 ms batch
    assert 1 <= batcher.waits <= 4
    assert time.perf_counter() - t0 < 4 * (0.05 + 0.02) + 4 * 0.0125 + 0.5  # bounded by that, not by the burst
    batcher.waits = 0
    _clients(batcher, clients=1, rounds=5, turnaround=0.01)
    assert batcher.waits == 0  # and no more once the burst has aged out
    _clients(batcher, clients=16, rounds=2, turnaround=0.0)
    time.sleep(0.1)  # a pause longer than the window: the burst's clients are not on their way back
    batcher.waits = 0
    _clients(batcher, clients=1, rounds=1, turnaround=0.0)
    assert batcher.waits == 0
