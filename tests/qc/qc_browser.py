"""A minimal headless-Chromium driver over the DevTools pipe (no extra Python dependency).

`--remote-debugging-pipe` makes Chromium read DevTools commands from fd 3 and write replies
and events to fd 4, as NUL-terminated JSON, so a page can be loaded and inspected with the
standard library alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageLoad:
    """What happened while a page loaded."""

    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    images: list[dict] = field(default_factory=list)  # src, complete, naturalWidth per <img>
    title: str = ""


class _Pipe:
    def __init__(self, proc: subprocess.Popen, write_fd: int, read_fd: int) -> None:
        self.proc, self.wfd, self.rfd = proc, write_fd, read_fd
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg: dict = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.wfd, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self.read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def read(self, deadline: float | None = None) -> dict:
        while b"\0" not in self.buf:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("no DevTools message before the deadline")
            chunk = os.read(self.rfd, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def wait_for(self, method: str, timeout: float) -> None:
        if any(e.get("method") == method for e in self.events):
            return
        deadline = time.monotonic() + timeout
        while True:
            event = self.read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return


class Page:
    """A page open in headless Chromium: run scripts in it and collect its downloads."""

    def __init__(self, pipe: _Pipe, session: str) -> None:
        self.pipe, self.session = pipe, session

    def evaluate(self, expression: str) -> object:
        """Value of a JavaScript expression (JSON-serialisable), or RuntimeError if it threw."""
        result = self.pipe.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "userGesture": True},
            session=self.session,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_download(self, folder: Path, timeout: float = 20.0) -> tuple[Path, str]:
        """(file, name the page gave it) of the first download, once Chromium completed it."""
        deadline = time.monotonic() + timeout
        while True:
            names = {
                e["params"]["guid"]: e["params"]["suggestedFilename"]
                for e in self.pipe.events
                if e.get("method") == "Browser.downloadWillBegin"
            }
            for e in self.pipe.events:
                p = e.get("params", {})
                if e.get("method") == "Browser.downloadProgress" and p.get("state") == "completed":
                    return Path(folder) / p["guid"], names.get(p["guid"], "")
            self.pipe.events.append(self.pipe.read(deadline))

    def load_report(self) -> PageLoad:
        """What happened since the page was opened: errors, requests and images."""
        page = json.loads(
            str(
                self.evaluate(
                    "JSON.stringify({title: document.title, images: Array.from("
                    "document.images).map(i => ({src: i.currentSrc || i.src, complete: "
                    "i.complete, naturalWidth: i.naturalWidth}))})"
                )
            )
        )
        load = PageLoad(title=page["title"], images=page["images"])
        for e in self.pipe.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                args = p.get("args", [])
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in args)
                load.errors.append("console: " + text)
            elif method == "Runtime.exceptionThrown":
                load.errors.append("exception: " + p["exceptionDetails"].get("text", ""))
            elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
                load.errors.append("log: " + p["entry"].get("text", ""))
            elif method == "Network.loadingFailed":
                load.errors.append("network: " + p.get("errorText", ""))
            elif method == "Network.requestWillBeSent":
                load.requests.append(p["request"]["url"])
        return load


@contextlib.contextmanager
def open_page(
    chromium: str, url: str, downloads: Path | None = None, timeout: float = 60.0
) -> Iterator[Page]:
    """Open `url` in a fresh headless Chromium profile; downloads go to `downloads`, named
    by their download id (Page.wait_download gives the path)."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()

    def wire_fds() -> None:  # runs in the child: DevTools expects fds 3 (in) and 4 (out)
        high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)  # out of the way of 3 and 4
        high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.dup2(high_r, 3)
        os.dup2(high_w, 4)

    with tempfile.TemporaryDirectory(prefix="qc-chromium-") as profile:
        cmd = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4, to_child_r, from_child_w),
            preexec_fn=wire_fds,  # the test process is single-threaded
        )
        os.close(to_child_r)
        os.close(from_child_w)
        pipe = _Pipe(proc, to_child_w, from_child_r)
        try:
            if downloads is not None:
                pipe.send(
                    "Browser.setDownloadBehavior",
                    {
                        "behavior": "allowAndName",
                        "downloadPath": str(downloads),
                        "eventsEnabled": True,
                    },
                )
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.events.clear()
            pipe.send("Page.navigate", {"url": url}, session=session)
            pipe.wait_for("Page.loadEventFired", timeout)
            yield Page(pipe, session)
        finally:
            with contextlib.suppress(RuntimeError, OSError):
                pipe.send("Browser.close")
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(to_child_w)
            os.close(from_child_r)


def load_page(chromium: str, url: str, timeout: float = 60.0) -> PageLoad:
    """Open `url` in a fresh headless Chromium profile and report errors, requests and images."""
    with open_page(chromium, url, timeout=timeout) as page:
        return page.load_report()


def page_url(path: Path) -> str:
    return Path(path).resolve().as_uri()
