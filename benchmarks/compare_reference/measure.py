"""Running a tool as a measured process tree, and judging a run by its files and log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import REF_OUTPUTS

ERROR_LINE = re.compile(r"^Error: (?P<path>.+?), (?P<msg>.*)$")


def _ppid_map() -> dict[int, int]:
    """pid -> parent pid for every process visible in /proc."""
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after the last ')'.
        fields = stat[stat.rindex(b")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppid_map().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _rss_pss_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; (0, 0) if it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        return 0, 0
    return rss, pss


@dataclass
class TreePeak:
    """Peaks over the life of a process tree (sampled every `interval` seconds)."""

    rss_mib: float = 0.0
    pss_mib: float = 0.0
    processes: int = 0
    samples: int = 0


class TreeMonitor(threading.Thread):
    """Polls /proc for a root pid and all its descendants until stopped."""

    def __init__(self, root: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak = TreePeak()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            pids = _descendants(self.root)
            sizes = [_rss_pss_kib(p) for p in pids]
            alive = sum(1 for s in sizes if s[0])
            rss = sum(s[0] for s in sizes) / 1024
            pss = sum(s[1] for s in sizes) / 1024
            peak = self.peak
            peak.rss_mib, peak.pss_mib = max(peak.rss_mib, rss), max(peak.pss_mib, pss)
            peak.processes = max(peak.processes, alive)
            peak.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> TreePeak:
        self._stop_event.set()
        self.join()
        return self.peak


@dataclass
class RunRecord:
    """One tool run on one case (or one batch)."""

    tool: str
    command: list[str]
    ok: bool = False
    wall_s: float = 0.0
    peak_rss_mib: float = 0.0
    peak_pss_mib: float = 0.0
    max_processes: int = 0
    exit_code: int | None = None
    timed_out: bool = False
    errors: list[str] = field(default_factory=list)
    log: str = ""
    outputs: dict[str, str] = field(default_factory=dict)  # kind -> path, per image name


def run_measured(
    cmd: list[str], env: dict[str, str], log_path: Path, timeout: float, tool: str
) -> RunRecord:
    """Run `cmd` in its own session, measure the tree, kill the whole session on timeout."""
    rec = RunRecord(tool=tool, command=cmd)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        monitor = TreeMonitor(proc.pid)
        monitor.start()
        try:
            rec.exit_code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rec.timed_out = True
            _kill_session(proc)
        rec.wall_s = round(time.perf_counter() - t0, 2)
        peak = monitor.stop()
        # Worker processes left behind after the root exited belong to the same session.
        _kill_session(proc)
    rec.peak_rss_mib, rec.peak_pss_mib = round(peak.rss_mib, 1), round(peak.pss_mib, 1)
    rec.max_processes = peak.processes
    rec.log = str(log_path)
    return rec


def _kill_session(proc: subprocess.Popen) -> None:
    """End the process group this harness started (and only that one)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.5)


def judge(
    rec: RunRecord,
    names: list[str],
    step1_only: bool,
    path_of: Callable[[str, str], Path],
    exit_code_matters: bool,
) -> None:
    """Fill `rec.outputs`, `rec.ok` and `rec.errors` from the files written and the log.

    The reference exits 0 when an image fails, so for it only the files and its
    `Error: <file>, <reason>` lines count; SpineSeg must also exit 0.
    """
    log = Path(rec.log).read_text(errors="replace")
    # tqdm separates its updates with \r: splitlines() splits there too.
    for line in log.splitlines():
        m = ERROR_LINE.match(line.strip())
        if m:
            rec.errors.append(f"{Path(m['path']).name}: {m['msg']}")
    for name in names:
        for kind in REF_OUTPUTS:
            path = path_of(name, kind)
            if path.exists():
                rec.outputs[f"{name}/{kind}"] = str(path)
    wanted = ("step1", "levels") if step1_only else ("final", "step1", "levels")
    missing = [f"{n}/{k}" for n in names for k in wanted if f"{n}/{k}" not in rec.outputs]
    bad_exit = exit_code_matters and rec.exit_code != 0
    rec.ok = not rec.timed_out and not missing and not bad_exit
    if rec.timed_out:
        rec.errors.append(f"timed out after {rec.wall_s:.0f} s")
    if missing:
        more = f" (+{len(missing) - 4} more)" if len(missing) > 4 else ""
        rec.errors.append("missing outputs: " + ", ".join(missing[:4]) + more)
    if rec.exit_code not in (0, None):
        rec.errors.append(f"exit code {rec.exit_code}: {_last_line(log)}")


def _last_line(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""
