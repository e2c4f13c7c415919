"""Run a coroutine to completion from synchronous code, inside or outside an event loop."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


@contextmanager
def _old_objects_frozen() -> Iterator[None]:
    """Spare the event loop full collections over objects that existed before it started.

    A process that has loaded pandas, torch and friends holds millions of objects; one
    generation-2 collection over them stalls every in-flight request for ~0.2 s. Objects
    made during the run are collected as usual; the frozen ones are thawed afterwards.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` here, or in a helper thread when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        with _old_objects_frozen():
            return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hal-judge") as pool:
        return pool.submit(run_sync, coroutine).result()
