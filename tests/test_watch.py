"""`market watch`: the followed state against the analyses, and the page in a real browser."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from analyses.control import agent_returns
from analyses.inequality import ALL_OPENED, inequality
from analyses.watch.follow import NotARun, RunFollower, SweepFollower, follower
from analyses.watch.server import Watch
from analyses.wealth import returns, wealth
from cli import app
from market.audit import audit
from simulation.rundir import open_run_ledger
from simulation.sweep import RUNS, SWEEP

MARKET = [sys.executable, "-c", "from cli import main; main()"]
ROOT = Path(__file__).resolve().parents[1]


def _market(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MARKET_BUDGET_SCALE", None)
    subprocess.run([*MARKET, *args], cwd=cwd, env=env, check=True, capture_output=True)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished fixed-bidder run of two segments (a run, then a resume)."""
    root = tmp_path_factory.mktemp("watch")
    _market("simulate", "--bidder", "random", "--episodes", "60", "--out", "run", cwd=root)
    return root / "run"


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _expected(run: Path) -> dict[str, Any]:
    events = open_run_ledger(run).scan()
    table = inequality(events)
    balances = wealth(events)
    return {
        "events": open_run_ledger(run).committed,
        "gini": table.filter(members=ALL_OPENED)["gini"].item(),
        "wealth": dict(balances.select("account", "credit").iter_rows()),
        "episodes": returns(events).height,
    }


def test_follower_folds_what_the_analyses_fold(small_run: Path, tmp_path: Path) -> None:
    run = _copy(small_run, tmp_path / "run")
    follow = RunFollower(run)
    assert follow.poll()
    state = follow.state()
    want = _expected(run)
    assert state["events"] == want["events"] == state["committed"]
    assert state["gini"]["all"] == pytest.approx(want["gini"], abs=1e-12)
    assert {r["account"]: r["credit"] for r in state["final_wealth"]} == pytest.approx(
        want["wealth"]
    )
    assert state["episodes"] == want["episodes"]
    assert state["audit"] == {"ok": True, "events": want["events"], "segments": 1,
                              "violation": None}  # fmt: skip
    assert state["head"] == open_run_ledger(run).head
    assert not follow.poll()  # nothing new: nothing read
    json.dumps(state)  # the page's data is plain JSON (no NaN)


def test_follower_reads_only_new_segments(small_run: Path, tmp_path: Path) -> None:
    run = _copy(small_run, tmp_path / "run")
    follow = RunFollower(run)
    follow.poll()
    before = follow.events
    _market("simulate", "--resume", str(run), "--episodes", "40", cwd=tmp_path)
    read: list[str] = []
    original = Path.read_bytes

    def spy(self: Path) -> bytes:
        read.append(self.name)
        return original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "read_bytes", spy)
        assert follow.poll()
    segments = [name for name in read if name.startswith("seg-")]
    assert segments == [open_run_ledger(run).links[-1].segment]  # the new one alone
    want = _expected(run)
    state = follow.state()
    assert state["events"] == want["events"] > before
    assert state["gini"]["all"] == pytest.approx(want["gini"], abs=1e-12)
    assert {r["account"]: r["credit"] for r in state["final_wealth"]} == pytest.approx(
        want["wealth"]
    )
    assert state["audit"]["ok"] and state["audit"]["segments"] == 2
    assert audit(open_run_ledger(run)).ok
    assert state["head"] == open_run_ledger(run).head


def test_a_broken_chain_shows_as_the_violation(small_run: Path, tmp_path: Path) -> None:
    run = _copy(small_run, tmp_path / "run")
    segment = run / "ledger" / open_run_ledger(run).links[0].segment
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    follow = RunFollower(run)
    follow.poll()
    status = follow.state()["audit"]
    assert not status["ok"] and status["violation"].startswith("seq 0: chain:")
    assert follow.caught_up  # a break stops the reading: no busy loop on it


def test_a_control_run_shows_its_agents_and_a_recent_episode(tmp_path: Path) -> None:
    _market("simulate", "--variant", "control", "--task", "pendulum", "--agents", "2",
            "--episodes", "40", "--out", "ctl", cwd=tmp_path)  # fmt: skip
    run = tmp_path / "ctl"
    follow = RunFollower(run)
    follow.poll()
    state = follow.state()
    events = open_run_ledger(run).scan()
    shown = state["trajectory"]
    steps = (
        events.filter((pl.col("kind") == "transition") & (pl.col("episode") == shown["episode"]))
        .sort("step")
        .collect()
    )
    assert shown["step"] == steps["step"].to_list() and len(shown["step"]) > 1
    assert shown["x"][0] == [x[0] for x in steps["x"].to_list()]
    assert shown["control"] == pytest.approx([sum(u) for u in steps["controls"].to_list()])
    mean = agent_returns(events).group_by("agent").agg(pl.col("credit").mean())
    plotted = {a: sum(v) / len(v) for a, v in state["agent_returns"]["agents"].items()}
    assert plotted.keys() == set(mean["agent"].to_list())
    assert state["audit"]["ok"]


def test_a_run_deleted_while_watched_is_a_message_not_a_crash(
    small_run: Path, tmp_path: Path
) -> None:
    run = _copy(small_run, tmp_path / "run")
    watch = Watch(run)
    before = json.loads(watch.state() or "{}")
    assert before["events"] == _expected(run)["events"] and "error" not in before
    shutil.rmtree(run)
    watch.refresh()
    after = json.loads(watch.state() or "{}")
    assert after["events"] == before["events"]  # the last state is kept, with the error
    assert after["error"] == f"{run}: deleted while watched; this is its last state"


def test_not_a_run_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(NotARun):
        follower(tmp_path)
    result = CliRunner().invoke(app, ["watch", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a run directory" in result.output


def test_a_port_in_use_is_one_line_and_exit_2(small_run: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["watch", str(small_run), "--port", str(port)])
    assert result.exit_code == 2
    assert f"cannot serve on 127.0.0.1:{port}" in result.output


def test_a_sweep_has_one_line_per_cell(small_run: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    (sweep / RUNS).mkdir(parents=True)
    (sweep / SWEEP).write_text("", encoding="utf-8")
    for seed in (0, 1):
        _copy(small_run, sweep / RUNS / "mechanism=ccv" / f"seed={seed}")
    follow = follower(sweep)
    assert isinstance(follow, SweepFollower)
    follow.poll()
    cells = follow.state()["cells"]
    assert [c["name"] for c in cells] == ["mechanism=ccv/seed=0", "mechanism=ccv/seed=1"]
    assert all(c["events"] == _expected(small_run)["events"] for c in cells)


# --- the page in a real browser -----------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4: no
    websocket library needed), one page attached."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()
        command = (
            f"exec {binary} --headless --no-sandbox --disable-gpu --no-first-run "
            f"--user-data-dir={profile} --remote-debugging-pipe --window-size=1400,2400 "
            f"about:blank 3<&{to_chrome} 4>&{from_chrome}"
        )
        self.proc = subprocess.Popen(
            ["bash", "-c", command],
            pass_fds=(to_chrome, from_chrome),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome)
        os.close(from_chrome)
        self._id, self._buffer, self.session = 0, b"", ""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._read, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"the page never showed: {expression}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._write)
            os.close(self._read)
        self.proc.terminate()
        self.proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _watching(run: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [*MARKET, "watch", str(run), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/state", timeout=2).close()
                break
            if server.poll() is not None:
                raise AssertionError(server.stderr.read().decode() if server.stderr else "")
            time.sleep(0.2)
        yield server
    finally:
        server.terminate()
        server.wait(10)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_endpoints_the_page_uses(small_run: Path, tmp_path: Path) -> None:
    run = _copy(small_run, tmp_path / "run")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with _watching(run, port):
        status, body = _get(base + "/state")
        state = json.loads(body)
        assert status == 200 and state["events"] == _expected(run)["events"]
        assert state["head"] == open_run_ledger(run).head
        assert _get(base + "/state?cell=nope")[0] == 404
        status, page = _get(base + "/")
        assert status == 200 and b"/static/watch.js" in page and b"/static/plotly.min.js" in page
        assert b"http" not in page  # every asset from this server: no CDN, no network
        status, plotly = _get(base + "/static/plotly.min.js")
        assert status == 200 and len(plotly) > 1_000_000
        with urllib.request.urlopen(base + "/stream", timeout=10) as stream:
            line = stream.readline()
        assert line.startswith(b"data: ")
        assert json.loads(line[6:])["events"] == state["events"]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")
def test_the_page_in_a_browser_shows_the_ledger_and_follows_it(tmp_path: Path) -> None:
    """On a short Hayek economy (births, deaths, learning, prices): the page is also the
    README's screenshot, written to $MARKET_SCREENSHOT when set (docs/watch.md)."""
    assert CHROMIUM is not None
    _market("simulate", "--preset", "hayek", "--seed", "0", "--steps", "20000", "--out", "run",
            cwd=tmp_path)  # fmt: skip
    run = tmp_path / "run"
    port = _free_port()
    with _watching(run, port) as server:
        assert server.stdout is not None
        browser = Browser(CHROMIUM, tmp_path / "profile")
        try:
            browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
            browser.wait_for("document.body && document.body.dataset.updates >= 1")
            want = _expected(run)
            shown = browser.evaluate("document.getElementById('gini-all').textContent")
            assert shown == f"{want['gini']:.6f}"
            events = browser.evaluate("document.getElementById('events').textContent")
            assert events == f"{want['events']:,}"
            rows = browser.evaluate(
                "[...document.querySelectorAll('#wealth-table tbody tr')]"
                ".map(r => [r.dataset.account, r.cells[1].textContent])"
            )
            assert dict(rows) == {a: f"{c:.6f}" for a, c in want["wealth"].items()}
            # the charts are drawn, with one line per account
            traces = browser.evaluate("document.getElementById('wealth').data.length")
            assert traces == len(want["wealth"])
            assert browser.evaluate("document.querySelectorAll('#lorenz .main-svg').length") > 0
            audited = browser.evaluate("document.getElementById('audit').textContent")
            assert "clean so far" in audited
            shot = browser.call("Page.captureScreenshot")["data"]
            assert len(shot) > 10_000
            if os.environ.get("MARKET_SCREENSHOT"):  # docs/img/watch.png (docs/watch.md)
                Path(os.environ["MARKET_SCREENSHOT"]).write_bytes(base64.b64decode(shot))
            # more events: the page follows without a reload
            browser.evaluate("window.notReloaded = true")
            _market("simulate", "--resume", str(run), "--steps", "2000", cwd=tmp_path)
            grown = _expected(run)
            browser.wait_for(
                f"document.getElementById('events').textContent === '{grown['events']:,}'"
            )
            assert browser.evaluate("window.notReloaded") is True
            browser.wait_for(
                f"document.getElementById('gini-all').textContent === '{grown['gini']:.6f}'"
            )
            segments = len(open_run_ledger(run).links)
            assert f"({segments} committed segments)" in browser.evaluate(
                "document.getElementById('audit').textContent"
            )
        finally:
            browser.close()
