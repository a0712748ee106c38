"""Benchmark: the full Hookgate intake against a bare Starlette endpoint, in one run.

Both run under uvicorn with one worker process, take the same load from wrk (64 connections,
2 KB GitHub-style bodies, a fresh X-GitHub-Delivery per request), and are reported as
requests/s, p50 and p99 latency, and Hookgate's throughput as a ratio of the bare endpoint's.
Hookgate does everything it does in production: size limit, HMAC verification, JSON parse,
dedupe and a durable commit (SQLite WAL synced before the answer, or $HOOKGATE_DATABASE_URL).
Every event belongs to one resource (an issue), so with the default ordering window of 2 s the
intake holds it and the workers' sweep sends it later (no workers run here, so nothing is sent):
that is a default deployment. With ``--window-ms 0`` the intake's relay also enqueues each event
to Redis (embedded, or $HOOKGATE_REDIS_URL) as it is committed, and the next batch marks it
``queued``, as in bench/side_by_side.py.

    python bench/intake.py [--seconds 15] [--connections 64] [--rounds 5] [--window-ms 0]

Both servers stay up for the whole run and take turns under load, round after round (the order
swapped each round), so that both see the same phases of a shared, noisy machine; the figure to
quote is the median of the per-round ratios, printed last.

Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

HERE = Path(__file__).resolve().parent
SECRET = b"bench-secret-0123456789"

LUA = """
local counter = 0
local thread_id = 0
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function init(args)
  thread_id = id
end
request = function()
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = "bench-" .. thread_id .. "-" .. counter .. "-" .. RUN
  return wrk.format("POST", nil, nil, nil)
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def body_of_2kb() -> bytes:
    issue = {"id": 1, "number": 1347, "title": "Found a bug", "body": "x" * 1908, "state": "open"}
    return json.dumps({"action": "opened", "issue": issue, "repository": {"id": 1296269}}).encode()


def run_wrk(url: str, body: bytes, seconds: int, connections: int, run_tag: str) -> dict[str, float]:
    signature = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        body_lua = body.decode().replace("\\", "\\\\").replace('"', '\\"')
        script.write_text(
            f'RUN = "{run_tag}"\nwrk.method = "POST"\nwrk.body = "{body_lua}"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            'wrk.headers["X-GitHub-Event"] = "issues"\n'
            f'wrk.headers["X-Hub-Signature-256"] = "{signature}"\n' + LUA
        )
        out = subprocess.run(
            ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s", str(script), url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> dict[str, float]:
    def ms(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.MULTILINE))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": ms(latency["50"]),
        "p99": ms(latency["99"]),
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0,
        "socket_errors": errors.group(1) if errors else "",  # type: ignore[dict-item]
    }


def cpu_seconds(root: int) -> float:
    """CPU time (user + system) used so far by process ``root`` and its descendants (the
    embedded Redis server is one), from /proc; 0.0 where /proc is not there."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        used[pid] = (int(fields[11]) + int(fields[12])) / tick
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += [child for child, parent in parents.items() if parent == pid and child not in tree]
    return sum(used.get(pid, 0.0) for pid in tree)


def start(command: list[str], env: dict[str, str], log: Path, cwd: Path = HERE.parent) -> subprocess.Popen[bytes]:
    """Start ``command`` with its output in ``log``; ``cwd`` is the checkout it serves (this one
    unless ``--baseline`` names another)."""
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)


BARE, HOOKGATE, BASELINE = "bare starlette", "hookgate intake", "hookgate baseline"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs of each target")
    parser.add_argument(
        "--window-ms",
        type=int,
        default=2000,
        help="the provider's ordering window; 0: the intake enqueues every event as it is committed",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. a git worktree of an older commit) served as a third target, "
        "to compare a change in the same run",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    body = body_of_2kb()
    database = os.environ.get("HOOKGATE_DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="hgbench-") as tmp:
        config = yaml.safe_load((HERE / "providers.yaml").read_text())
        config["defaults"] = {"ordering": {"window_ms": args.window_ms}}
        (Path(tmp) / "providers.yaml").write_text(yaml.safe_dump(config))
        env = {**os.environ, "HOOKGATE_CONFIG": str(Path(tmp) / "providers.yaml")}
        serve = [sys.executable, "-m", "gateway.cli", "serve"]
        targets: dict[str, tuple[list[str], Path, dict[str, str]]] = {
            BARE: (
                [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--no-access-log", "--log-level", "warning"],
                HERE.parent,
                env,
            ),
            HOOKGATE: (
                serve,
                HERE.parent,
                {
                    **env,
                    "HOOKGATE_DATABASE_URL": database or f"sqlite:///{tmp}/bench.db",
                    "HOOKGATE_DATA_DIR": f"{tmp}/data",
                },
            ),
        }
        if args.baseline:
            base_env = {
                **env,
                "HOOKGATE_DATABASE_URL": database or f"sqlite:///{tmp}/baseline.db",
                "HOOKGATE_DATA_DIR": f"{tmp}/baseline-data",
                "PYTHONPATH": str(args.baseline.resolve()),
            }
            targets[BASELINE] = (serve, args.baseline.resolve(), base_env)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        urls: dict[str, str] = {}
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for name, (command, cwd, target_env) in targets.items():
                port = free_port()
                log = Path(tmp) / f"{name.replace(' ', '-')}.log"
                procs.append(start([*command, "--port", str(port)], target_env, log, cwd))
                wait_ready(f"http://127.0.0.1:{port}/healthz")
                print(f"{name}: pid {procs[-1].pid}, port {port}", file=sys.stderr, flush=True)
                urls[name] = f"http://127.0.0.1:{port}/webhooks/github"
                run_wrk(urls[name], body, 2, args.connections, f"warm{port}")
            names = list(targets)
            for round_no in range(args.rounds):
                turn = round_no % len(names)
                for name in names[turn:] + names[:turn]:  # each target leads in turn
                    tag = f"r{round_no}{names.index(name)}p{os.getpid()}"
                    pid = procs[names.index(name)].pid
                    before = cpu_seconds(pid)
                    result = run_wrk(urls[name], body, args.seconds, args.connections, tag)
                    result["cpu_us"] = (cpu_seconds(pid) - before) / max(result["requests"], 1) * 1e6
                    runs[name].append(result)
                line = " ".join(f"{name} {runs[name][-1]['rps'] / runs[BARE][-1]['rps']:.3f}" for name in names[1:])
                print(f"round {round_no + 1}: {line}", file=sys.stderr, flush=True)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
    print(f"\n{'round':>5} {'target':18} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>10} {'non-2xx':>8}")
    for round_no in range(args.rounds):
        for name in runs:
            r = runs[name][round_no]
            print(
                f"{round_no + 1:>5} {name:18} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['cpu_us']:>10.0f} "
                f"{r['non_2xx']:>8.0f} {r['socket_errors']}"
            )
    print(
        f"\nbodies {len(body)} B, {args.connections} connections, {args.seconds} s per run, {args.rounds} rounds, "
        f"database {(database or 'sqlite').split(':')[0]}, ordering window {args.window_ms} ms; bare p99 median "
        f"{statistics.median(r['p99'] for r in runs[BARE]):.2f} ms"
    )
    for name in list(runs)[1:]:
        ratios = [h["rps"] / b["rps"] for h, b in zip(runs[name], runs[BARE], strict=True)]
        p99s = [r["p99"] for r in runs[name]]
        print(
            f"{name}: ratio to bare per round {' '.join(f'{r:.3f}' for r in ratios)}; "
            f"median ratio {statistics.median(ratios):.3f}, p99 median {statistics.median(p99s):.2f} ms "
            f"(max {max(p99s):.2f}); CPU per request {statistics.median(r['cpu_us'] for r in runs[name]):.0f} us "
            f"(bare {statistics.median(r['cpu_us'] for r in runs[BARE]):.0f} us)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
