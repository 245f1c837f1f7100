"""Threads that run scoring batches, each on exactly one torch intra-op thread for its whole life.

Why one thread per batch: a batch's float32 result depends on how many threads its kernels split over (MKL
splits a GEMM's rows differently on 2 threads, an element-wise op's vector tail moves with the split), so a
score would move with the caller's ``torch.set_num_threads``. Here every batch runs on a pool thread set to one
intra-op thread, whatever the caller set; the caller's thread count only says how many batches run at once.

Why not ``torch.set_num_threads(1)`` around each call, as scoring once did: it is process-wide state (torch's
count for threads new to torch; MKL's), so other work in the process saw it change. A pool thread sets its own
count once, when the pool is made; making the pool (once per process and size) puts torch's default for new
threads back right away (:func:`one_thread_pool`). Scoring never changes the thread count after that.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

_POOLS: dict[int, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def one_thread_pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` threads (made once per size, reused), each pinned to one torch
    intra-op thread. All of them are started and pinned before it is returned; then torch's count for threads
    new to torch is put back to what it was (pinning a thread sets it, too)."""
    workers = max(int(workers), 1)
    with _LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"reviewflow-score{workers}")
            default = torch.get_num_threads()
            started = threading.Barrier(workers + 1)
            pins = [pool.submit(_pin, started) for _ in range(workers)]    # each blocks: one thread each
            started.wait()
            for pin in pins:
                pin.result()
            torch.set_num_threads(default)     # the calling thread's own count (unchanged) and the default back
            _POOLS[workers] = pool
        return pool


def _pin(started: threading.Barrier) -> None:
    torch.get_num_threads()         # a thread new to torch adopts the default at its first call: take it first ...
    torch.set_num_threads(1)        # ... then one intra-op thread, for good
    started.wait()


def on_one_thread(fn: Callable[[T], R]) -> Callable[[T], R]:
    """``fn`` checked to run on a pinned pool thread (a pool thread is never unpinned: this guards the rule)."""
    def run(arg: T) -> R:
        if torch.get_num_threads() != 1:
            raise RuntimeError("a scoring batch ran on a thread with more than one torch thread")
        return fn(arg)
    return run


def map_in_order(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``fn(item)`` for every item, in order, on ``workers`` pinned pool threads at once (one torch thread
    each). ``workers`` changes how fast, never what: every call runs on one torch thread."""
    return one_thread_pool(workers).map(on_one_thread(fn), items)
