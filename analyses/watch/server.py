"""The watch page's server: Starlette, with the page's state pushed by server-sent events.

One thread polls the followed run or sweep (`follow.py`) every `interval` seconds and keeps
the latest state as JSON; each page holds one `EventSource` on `/stream` and is sent the
state whenever it changes. Every asset is served from here (the page's own script and
Plotly's, shipped inside the `plotly` Python package), so the page works with no network.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from analyses.watch.follow import NotARun, RunFollower, SweepFollower, follower
from ledger.errors import LedgerError

DEFAULT_PORT = 8765
DEFAULT_HOST = "127.0.0.1"
INTERVAL = 1.0
"""Seconds between two looks at the ledger."""
KEEPALIVE = 15.0
"""Seconds between two comments on an idle event stream (keeps proxies from closing it)."""


class Watch:
    """The followed run or sweep, polled on a thread; its latest state as JSON, versioned."""

    def __init__(self, path: Path, interval: float = INTERVAL) -> None:
        self.target: RunFollower | SweepFollower = follower(path)
        self.interval = interval
        self.version = 0
        self.error: str | None = None
        self._states: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="watch-poll", daemon=True)
        self.refresh()

    def refresh(self) -> None:
        """Fold what was committed since the last look and rebuild the states shown."""
        try:
            self.target.poll()
            states = {"": json.dumps(self.target.state())}
            if isinstance(self.target, SweepFollower):
                for name, cell in self.target.cells.items():
                    states[name] = json.dumps(cell.state())
            error = None
        except (NotARun, LedgerError) as e:  # gone or damaged: say so, keep the last state
            states, error = self._states, str(e)
        except Exception as e:  # anything else mid-write: the same, with its kind
            states, error = self._states, f"{type(e).__name__}: {e}"
        with self._lock:
            changed = states != self._states or error != self.error
            self._states, self.error = states, error
            if changed:
                self.version += 1

    def state(self, cell: str = "") -> str | None:
        with self._lock:
            text = self._states.get(cell)
            if text is None or self.error is None:
                return text
            data = json.loads(text)
            data["error"] = self.error
            return json.dumps(data)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()
            while self.error is None and not self.target_caught_up() and not self._stop.is_set():
                self.refresh()  # a long ledger: fold it in bites, showing each

    def target_caught_up(self) -> bool:
        target = self.target
        if isinstance(target, RunFollower):
            return target.caught_up
        return all(cell.caught_up for cell in target.cells.values())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def app(watch: Watch) -> Starlette:
    """The Starlette application serving `watch`'s page."""

    async def page(request: Request) -> Response:
        return HTMLResponse(_asset("page.html"))

    async def script(request: Request) -> Response:
        return Response(_asset("page.js"), media_type="text/javascript")

    async def plotly(request: Request) -> Response:
        return Response(
            _plotly(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"}
        )

    async def state(request: Request) -> Response:
        text = watch.state(request.query_params.get("cell", ""))
        if text is None:
            return JSONResponse({"error": "no such cell"}, status_code=404)
        return Response(text, media_type="application/json")

    async def stream(request: Request) -> Response:
        cell = request.query_params.get("cell", "")
        return StreamingResponse(
            _events(request, watch, cell),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        watch.start()
        yield
        watch.stop()

    routes = [
        Route("/", page),
        Route("/static/watch.js", script),
        Route("/static/plotly.min.js", plotly),
        Route("/state", state),
        Route("/stream", stream),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def _events(request: Request, watch: Watch, cell: str) -> AsyncIterator[str]:
    """The state as server-sent events: now, then whenever it changes."""
    sent, idle = -1, 0.0
    while not await request.is_disconnected():
        if watch.version != sent:
            sent = watch.version
            text = watch.state(cell)
            if text is not None:
                yield f"data: {text}\n\n"
            idle = 0.0
        elif idle >= KEEPALIVE:
            yield ": keep-alive\n\n"
            idle = 0.0
        await asyncio.sleep(0.25)
        idle += 0.25


@cache
def _asset(name: str) -> str:
    return resources.files("analyses.watch").joinpath("static", name).read_text("utf-8")


@cache
def _plotly() -> str:
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; OSError if the port is taken (or not ours to use)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(
    watch: Watch, sock: socket.socket, ready: Callable[[], None] | None = None
) -> None:  # pragma: no cover - exercised through `market watch` in the browser test
    """Serve the page on `sock` until interrupted (Ctrl-C)."""
    import uvicorn

    config = uvicorn.Config(
        app(watch), log_level="warning", timeout_graceful_shutdown=1, lifespan="on"
    )
    server = uvicorn.Server(config)
    if ready is not None:
        ready()
    server.run(sockets=[sock])


def page_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


__all__: list[Any] = ["DEFAULT_HOST", "DEFAULT_PORT", "Watch", "app", "bind", "page_url", "serve"]
