"""Builds micro-batches on a background thread into pinned memory, so the GPU never waits on Python."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator


class Prefetcher:
    """Iterates `make(item)` for each item, `depth` items ahead of the consumer."""

    def __init__(self, items: Iterable, make: Callable, *, depth: int = 2, pin: bool = False):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._make = make
        self._pin = pin
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(items),), daemon=True)
        self._thread.start()

    _END = object()

    def _run(self, it) -> None:
        try:
            for item in it:
                if self._stop.is_set():
                    return
                out = self._make(item)
                if self._pin:
                    out = [mb.pin() for mb in out] if isinstance(out, list) else out.pin()
                self._q.put(out)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
            self._q.put(exc)
            return
        self._q.put(self._END)

    def __iter__(self) -> Iterator:
        while True:
            out = self._q.get()
            if out is self._END:
                return
            if isinstance(out, BaseException):
                raise out
            yield out

    def close(self) -> None:
        self._stop.set()
        while not self._q.empty():
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
