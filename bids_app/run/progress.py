"""Live progress of a participant run: a bar on a terminal, one line per image elsewhere.

On a terminal one bar shows images done, failed or partial, elapsed time, ETA and the stage
each image in flight is at; log lines print above it. In a cluster log (no terminal) each
finished image gets one plain line with its status and time, so `tail -f` tells the same story.
"""

from __future__ import annotations

import logging
import sys
import threading
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bids_app.bids.stamps import Status, source_stem

log = logging.getLogger(__name__)


class RunProgress:
    """Thread-safe progress of `total` images (`quiet` or no terminal: no bar)."""

    def __init__(self, total: int, *, quiet: bool = False, bar: bool | None = None):
        self.total = total
        self.done = self.not_ok = 0
        self._stages: dict[str, str] = {}
        self._lock = threading.Lock()
        show = sys.stderr.isatty() if bar is None else bar
        self._bar = None if quiet or not show else tqdm(total=total, unit="image", leave=True)
        self._redirect: AbstractContextManager[object] = (
            logging_redirect_tqdm() if self._bar is not None else nullcontext()
        )

    def __enter__(self) -> RunProgress:
        self._redirect.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()
        self._redirect.__exit__(kind, value, tb)

    def stage(self, image: str, stage: str) -> None:
        """Image `image` entered `stage` (shown in the bar's postfix)."""
        with self._lock:
            self._stages[image] = stage
            self._refresh()

    def finished(self, image: str, status: str, seconds: float) -> None:
        """One image ended: count it, and log its line (the cluster-log form of the bar)."""
        with self._lock:
            self._stages.pop(image, None)
            self.done += 1
            self.not_ok += status in (Status.FAILED, Status.PARTIAL)
            if self._bar is not None:
                self._bar.update(1)
                self._refresh()
            log.info("[%d/%d] %s: %s in %.1f s", self.done, self.total, image, status, seconds)

    def _refresh(self) -> None:
        if self._bar is None:
            return
        # The whole name without extension: two images of one subject must not look alike.
        stages = ", ".join(f"{source_stem(name)}:{st}" for name, st in self._stages.items())
        text = f"failed/partial {self.not_ok}" + (f" | {stages}" if stages else "")
        self._bar.set_postfix_str(text)
