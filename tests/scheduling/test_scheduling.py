"""The scheduling machinery on its own: device workers, images in flight, the CPU budget."""

from __future__ import annotations

import threading
import time

import pytest

from bids_app.run.resources import parse_devices, plan_budget
from bids_app.run.scheduling import Cancelled, DevicePool, ImageScheduler


class Worker:
    """A stand-in for one device's networks: remembers its device and its calls."""

    def __init__(self, device: str):
        self.device = device
        self.calls = 0


def test_each_device_builds_its_worker_once_and_both_take_calls():
    made: list[str] = []

    def make(device: str) -> Worker:
        made.append(device)
        return Worker(device)

    pool = DevicePool(["cuda:0", "cuda:1"], make)

    def call(worker: Worker) -> str:
        worker.calls += 1
        time.sleep(0.05)
        return worker.device

    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(pool.run(call))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.close()
    assert sorted(made) == ["cuda:0", "cuda:1"]  # models loaded once per device
    assert set(results) == {"cuda:0", "cuda:1"} and len(results) == 8
    assert sum(s.calls for s in pool.stats) == 8
    assert all(s.busy_s > 0 for s in pool.stats)


def test_an_error_on_a_device_reaches_the_caller_with_its_type():
    pool = DevicePool(["cpu"], Worker)

    def boom(worker: Worker) -> None:
        raise MemoryError("CUDA out of memory")

    with pytest.raises(MemoryError, match="out of memory"):
        pool.run(boom)
    assert pool.run(lambda w: w.device) == "cpu"  # the worker survives
    pool.close()


def test_closing_with_cancel_fails_queued_calls_and_refuses_new_ones():
    pool = DevicePool(["cpu"], Worker)
    started, release = threading.Event(), threading.Event()

    def slow(worker: Worker) -> str:
        started.set()
        release.wait(5)
        return "done"

    outcomes: list[object] = []

    def ask() -> None:
        try:
            outcomes.append(pool.run(slow))
        except Cancelled:
            outcomes.append("cancelled")

    first = threading.Thread(target=ask)
    first.start()
    started.wait(5)
    second = threading.Thread(target=ask)
    second.start()
    time.sleep(0.1)  # the second call is queued behind the first
    threading.Timer(0.3, release.set).start()  # the running call ends after close() began
    pool.close(cancel=True)
    # close() returns only once the device threads have ended: none is left inside a
    # network call when Python exits (a thread killed in torch aborts the process, 134).
    assert release.is_set() and not any(t.is_alive() for t in pool._threads)
    first.join(5), second.join(5)
    assert sorted(map(str, outcomes)) == ["cancelled", "done"]
    with pytest.raises(Cancelled):
        pool.run(slow)


def test_images_in_flight_are_bounded_and_dependencies_respected():
    lock = threading.Lock()
    running, peak, order = 0, 0, []

    def work(item: str) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
            order.append(item)
        return item.upper()

    items = ["loc", "guided", "a", "b", "c", "d"]
    scheduler = ImageScheduler(in_flight=3)
    done = {
        item: fut.result()
        for item, fut in scheduler.map_unordered(
            work, items, after=lambda i: ["loc"] if i == "guided" else []
        )
    }
    scheduler.close()
    assert done == {i: i.upper() for i in items}
    assert peak == 3
    assert order.index("loc") < order.index("guided")


def test_a_cancelled_scheduler_stops_at_the_next_stage():
    scheduler = ImageScheduler(in_flight=1)
    scheduler.cancel()
    with pytest.raises(Cancelled):
        scheduler.check()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cuda:0,cuda:1", ("cuda:0", "cuda:1")),
        ("CPU", ("cpu",)),
        ("cpu,cpu", ("cpu", "cpu")),
        ("cuda", ("cuda",)),
    ],
)
def test_device_lists(text, expected):
    assert parse_devices(text) == expected


@pytest.mark.parametrize("text", ["gpu", "cuda:x", "auto,cpu", ""])
def test_bad_device_lists_are_refused(text):
    with pytest.raises(ValueError):
        parse_devices(text)


def test_budget_splits():
    slurm = {"SLURM_CPUS_PER_TASK": "16"}
    gpus = plan_budget(("cuda:0", "cuda:1"), None, None, env=slurm)
    assert (gpus.network_workers, gpus.network_threads, gpus.in_flight) == (2, 1, 4)
    assert gpus.cpus <= 16
    one_core = plan_budget(("cpu",), 1, None)
    assert (one_core.cpus, one_core.in_flight) == (1, 1)  # --nprocs 1 means no pipeline
    off = plan_budget(("cpu",), 2, None, pipeline=False)
    assert off.in_flight == 1
    capped = plan_budget(("cpu",), 1000, 1000)
    assert capped.cpus < 1000 and capped.network_threads == capped.cpus
    assert "capped" in capped.source
    chosen = plan_budget(("cpu",), None, None, in_flight=5)
    assert chosen.in_flight == (5 if chosen.cpus > 1 else 1)


def test_a_device_whose_models_cannot_load_reports_it_to_every_call():
    def broken(device: str) -> Worker:
        raise OSError(f"{device}: checkpoint unreadable")

    pool = DevicePool(["cpu"], broken)
    for _ in range(2):
        with pytest.raises(OSError, match="checkpoint unreadable"):
            pool.run(lambda w: w.device)
    pool.close()


def test_the_memory_gate_holds_images_until_their_estimate_fits():
    from bids_app.run.scheduling import MemoryGate

    gate = MemoryGate(100)
    assert gate.fits(100) and not gate.fits(101)
    first = gate.reserve(70)
    admitted = threading.Event()

    def second() -> None:
        with gate.reserve(60):
            admitted.set()

    t = threading.Thread(target=second)
    t.start()
    assert not admitted.wait(0.3)  # 70 + 60 > 100: waits
    first.__exit__(None, None, None)
    assert admitted.wait(5)
    t.join()
    assert gate.used == 0


def test_memory_budget_from_the_option_and_slurm():
    from bids_app.run.resources import plan_memory

    mib = 2**20
    chosen = plan_memory(1000, 2, held_bytes=200 * mib)
    assert chosen.total == 1000 * mib and chosen.for_images == 800 * mib
    assert chosen.source == "--mem-mb"
    tiny = plan_memory(100, 2, held_bytes=500 * mib)
    assert tiny.for_images == 25 * mib  # never below a quarter of the total
    slurm = plan_memory(None, 4, 0, env={"SLURM_MEM_PER_CPU": "1000"})
    assert slurm.total <= 4000 * mib
