"""Scheduling images over CPU threads and network calls over devices.

A participant run keeps the networks busy: each image runs its CPU stages (reading, checks,
preprocessing, labeling, back to native, writing, QC) in a thread of its own, and only its
network calls queue for a device. One worker thread per device owns that device's models
(loaded once there, never per image) and serves whichever image asks next.

Threads for the images: the networks, SimpleITK, zlib and most numpy/scipy calls release the
GIL, the models stay in one place, and nothing forks after torch has started its OpenMP
threads (the reason the reference tool hangs without `--no-stalling`). The stages that hold
the GIL most (vertebral bodies, QC: per-voxel Python, figures) can run in `StageWorkers`, a
pool of *spawned* worker processes (never forked), so that on a GPU node the images' threads
keep only the network feeding and the GIL-free work. A cancelled run raises `Cancelled` (a
BaseException, so the per-image `except Exception` handlers never turn it into a failure
record) at the next stage boundary or network call.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    CancelledError,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from bids_app.plumbing.errors import ExitCode, UserError

log = logging.getLogger(__name__)

W = TypeVar("W")  # what a device worker holds (the networks of one device)
T = TypeVar("T")
R = TypeVar("R")


class Cancelled(BaseException):
    """The run is stopping (Ctrl-C, SIGTERM): abandon this image, record nothing for it."""


@dataclass
class DeviceStats:
    """Busy time of one device worker, for the run summary and the throughput benchmark."""

    device: str
    calls: int = 0
    busy_s: float = 0.0


@dataclass
class _Request:
    call: Callable[[object], object]
    future: Future = field(default_factory=Future)


class DevicePool(Generic[W]):
    """One worker thread per device; `run(call)` executes `call(worker)` on the next free one.

    `make_worker(device)` builds what a device holds (its networks); it is called in the
    device's own thread, once, as soon as the pool starts, so loading the models overlaps
    with the first image's reading and preprocessing; if it fails, every call on that device
    gets its error. Requests are served first come, first served by
    whichever device is free, so two GPUs each take every other image's network call.
    """

    def __init__(self, devices: Sequence[str], make_worker: Callable[[str], W]):
        if not devices:
            raise ValueError("a device pool needs at least one device")
        self.devices = tuple(devices)
        self.stats = [DeviceStats(d) for d in self.devices]
        self._make_worker = make_worker
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, args=(i,), name=f"spineseg-{d}", daemon=True)
            for i, d in enumerate(self.devices)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, call: Callable[[W], R]) -> R:
        """`call(worker)` on a free device; blocks the calling image thread until done."""
        if self._cancel.is_set():
            raise Cancelled()
        request = _Request(call)  # type: ignore[arg-type]
        self._queue.put(request)
        return request.future.result()  # an error on the device is raised here, type kept

    def _serve(self, index: int) -> None:
        stats = self.stats[index]
        worker, failure = None, None
        try:
            worker = self._make_worker(self.devices[index])
        except Exception as e:  # e.g. corrupt weights: each call on this device reports it
            failure = e
        while True:
            request = self._queue.get()
            if request is None:
                return
            if self._cancel.is_set():
                request.future.set_exception(Cancelled())
                continue
            if not request.future.set_running_or_notify_cancel():
                continue
            t0 = time.perf_counter()
            try:
                if failure is not None:
                    raise failure
                request.future.set_result(request.call(worker))
            except BaseException as e:  # the image's thread decides what the error means
                request.future.set_exception(e)
            finally:
                stats.calls += 1
                stats.busy_s += time.perf_counter() - t0

    def close(self, cancel: bool = False) -> None:
        """Stop the device threads: after the queued calls, or failing them with Cancelled
        (`cancel`: the run is stopping). Safe to call twice.

        Always waits for the threads, also when cancelling (the call a device is in, a model
        load or a prediction, ends first): a thread still inside torch when Python exits is
        killed in native code, and the process aborts ("terminate called without an active
        exception", exit 134) instead of exiting with the run's code.
        """
        if cancel:
            self._cancel.set()
        if not self._closed:
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()


class ImageScheduler:
    """Runs `work(item)` for a stream of items on `in_flight` threads, in submission order.

    At most `in_flight` items are in progress at once (their arrays are in memory); the rest
    wait as plain descriptions, so memory does not grow with the dataset. Results come back
    as they finish; `cancel()` stops handing out items and trips `check()` in running ones.
    """

    def __init__(self, in_flight: int):
        self.in_flight = max(1, in_flight)
        self._pool = ThreadPoolExecutor(self.in_flight, thread_name_prefix="spineseg-image")
        self._cancel = threading.Event()

    def check(self) -> None:
        """Raise Cancelled when the run is stopping (called at every stage boundary)."""
        if self._cancel.is_set():
            raise Cancelled()

    def map_unordered(
        self,
        work: Callable[[T], R],
        items: Iterable[T],
        after: Callable[[T], Sequence[T]] | None = None,
    ) -> Iterator[tuple[T, Future]]:
        """Submit every item, each started once the earlier items `after(item)` names (e.g.
        its localizer) are done, and yield `(item, future)` as each finishes.

        Items are taken in order by a FIFO pool, so an item that waits for an earlier one
        never blocks it: the earlier one is already running or done.
        """
        futures: dict[Future, T] = {}
        by_item: dict[int, Future] = {}

        def run(item: T) -> R:
            wait([by_item[id(dep)] for dep in (after(item) if after else ())])
            self.check()
            return work(item)

        for item in items:
            fut = self._pool.submit(run, item)
            futures[fut] = item
            by_item[id(item)] = fut
        pending = set(futures)
        while pending:
            # A timeout keeps the main thread responsive to signals (Ctrl-C, SIGTERM).
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            order = list(futures)
            for fut in sorted(done, key=order.index):
                yield futures[fut], fut

    def cancel(self) -> None:
        self._cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class MemoryGate:
    """Admits images by their estimated memory: an image waits until the images in flight
    leave room for it, so the sum of their estimates stays within `capacity` bytes. An image
    larger than the whole capacity is the caller's to refuse (`fits`); one that fits alone
    is always admitted once nothing else is in flight."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._cond = threading.Condition()

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.capacity

    def reserve(self, nbytes: int, check: Callable[[], None] = lambda: None) -> _Reservation:
        """Block until `nbytes` fit (calling `check` while waiting, to honour a cancel)."""
        with self._cond:
            while self.used and self.used + nbytes > self.capacity:
                check()
                self._cond.wait(timeout=0.5)
            self.used += nbytes
        return _Reservation(self, nbytes)

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.used -= nbytes
            self._cond.notify_all()


@dataclass
class _Reservation:
    gate: MemoryGate
    nbytes: int

    def __enter__(self) -> _Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.release(self.nbytes)


# ------------------------------------------------------------------------ worker processes
@dataclass
class _Raised:
    """An exception of a worker, made to cross back to the run: itself when it survives a
    pickle round trip, else its type name and message (a `UserError` keeps its exit code)."""

    error: BaseException | None
    type_name: str
    message: str
    code: int | None
    traceback: str

    @classmethod
    def of(cls, error: BaseException) -> _Raised:
        text = "".join(traceback.format_exception(error))
        code = int(error.code) if isinstance(error, UserError) else None
        kept: BaseException | None = None
        if code is None:
            try:
                kept = pickle.loads(pickle.dumps(error))
            except Exception:  # an exception class that cannot be rebuilt from its args
                kept = None
        return cls(kept, type(error).__name__, str(error), code, text)

    def rebuild(self) -> BaseException:
        """The exception as the stage raised it (same type name and message), with the
        worker's traceback as its cause, as `concurrent.futures` does, for the crash file."""
        if self.code is not None:
            error: BaseException = UserError(ExitCode(self.code), self.message)
        elif self.error is not None:
            error = self.error
        else:  # same name, so the image's one-line reason reads as in the main process
            error = type(self.type_name, (Exception,), {})(self.message)
        error.__cause__ = WorkerTraceback(self.traceback)
        return error


class WorkerDied(Exception):
    """The worker process running a stage ended without an answer (killed, out of memory)."""


class WorkerTraceback(Exception):
    """The traceback of an exception raised in a stage worker process (its text)."""

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0]}"""'


@dataclass
class _Done:
    value: object
    raised: _Raised | None
    records: list[logging.LogRecord]


class _Collect(logging.Handler):
    """Keeps a worker task's log records, made picklable, for the run's own handlers."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:  # tracebacks cannot be pickled: their text can
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = record.getMessage(), None
        record.exc_info, record.stack_info = None, None
        self.records.append(record)


def _worker_start() -> None:
    """A worker ignores Ctrl-C: the run's main process decides what a Ctrl-C stops (it lets
    the stages in the workers finish, as it lets the images' threads finish theirs)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _in_worker(call: Callable[..., R], args: tuple, levels: dict[str, int]) -> _Done:
    """`call(*args)` in a worker process, with the run's log levels; what it logged and
    raised goes back with its value."""
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)
    root = logging.getLogger()
    collect = _Collect()
    root.addHandler(collect)
    try:
        return _Done(call(*args), None, collect.records)
    except BaseException as e:  # the image's thread in the main process decides
        return _Done(None, _Raised.of(e), collect.records)
    finally:
        root.removeHandler(collect)


class StageWorkers:
    """A pool of `processes` spawned worker processes for stages that may leave the main
    process (0: none; every call then runs in the calling thread).

    Started on the first call, so a run that only skips images starts none; the workers
    import what a stage needs once. A call's arguments are pickled to the worker (their
    arrays are copied: the caller reserves their bytes in the memory gate), its value,
    log records and exception come back: the exception keeps its type name and message (a
    `UserError` its exit code) so an image fails with the same one-line reason as in a
    thread. A worker that dies (killed, out of memory) fails the images whose stages it held
    and the pool is replaced for the next ones. `close()` ends the workers: after the calls
    in progress, queued calls cancelled (`cancel`, raising `Cancelled` in their images).
    """

    def __init__(self, processes: int):
        self.processes = max(0, processes)
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._closed = False

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed or self._cancel.is_set():
                raise Cancelled()
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_start,
                )
            return self._pool

    def call(self, call: Callable[..., R], *args: object) -> R:
        """`call(*args)` in a worker (in this thread without workers); logs re-emitted here."""
        if not self.processes:
            return call(*args)
        pool = self._executor()
        levels = {name: logging.getLogger(name or None).level for name in ("", "bids_app")}
        try:
            done = pool.submit(_in_worker, call, args, levels).result()
        except CancelledError:  # queued when the run stopped
            raise Cancelled() from None
        except BrokenProcessPool as e:
            if self._cancel.is_set():
                raise Cancelled() from None
            with self._lock:  # the next images get fresh workers
                if self._pool is pool:
                    self._pool = None
                    pool.shutdown(wait=False, cancel_futures=True)
            raise WorkerDied(
                "a stage worker process died (killed by the system, e.g. out of memory)"
            ) from e
        for record in done.records:
            logging.getLogger(record.name).handle(record)
        if done.raised is not None:
            raise done.raised.rebuild()
        return done.value  # type: ignore[return-value]

    def close(self, cancel: bool = False) -> None:
        """End the workers (safe to call twice); `cancel`: queued calls do not start."""
        if cancel:
            self._cancel.set()
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=cancel)
