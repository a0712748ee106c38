"""Measurement: what a stalled store costs ``hookgate serve`` in memory, and how it answers.

Starts ``hookgate serve`` on a SQLite store whose write lock another connection holds, posts
N signed 64 KiB GitHub deliveries from 64 concurrent clients, and prints the answers and the
server's resident memory before and after. Before the inbox was bounded, 3,000 such requests
grew the process from 71 MB to 263 MB: each answered 503 after the commit timeout but left its
row queued. Now the inbox holds at most ``HOOKGATE_INBOX_MAX_ROWS`` rows and
``HOOKGATE_INBOX_MAX_BYTES`` bytes and the rest are answered 503 at once.

    python bench/stalled_store.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import hmac
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.intake import HERE, SECRET, wait_ready


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def post_all(url: str, count: int, body: bytes) -> collections.Counter[int]:
    signature = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    answers: collections.Counter[int] = collections.Counter()
    limit = asyncio.Semaphore(64)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:

        async def one(index: int) -> None:
            headers = {
                "X-GitHub-Event": "issues",
                "X-GitHub-Delivery": f"stall-{index}",
                "X-Hub-Signature-256": signature,
                "Content-Type": "application/json",
            }
            async with limit:
                answers[(await client.post(url, content=body, headers=headers)).status_code] += 1

        await asyncio.gather(*(one(i) for i in range(count)))
    return answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    body = json.dumps({"action": "opened", "issue": {"id": 1, "body": "x" * (64 * 1024 - 100)}}).encode()
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "hookgate.db"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {
            **os.environ,
            "HOOKGATE_CONFIG": str(HERE / "providers.yaml"),
            "HOOKGATE_DATABASE_URL": f"sqlite:///{database}",
            "HOOKGATE_DATA_DIR": str(Path(tmp) / "data"),
        }
        command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
        with (Path(tmp) / "serve.log").open("wb") as log:
            server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent)
        try:
            wait_ready(f"http://127.0.0.1:{port}/healthz")
            before = rss_mb(server.pid)
            holder = sqlite3.connect(database, isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
            started = time.monotonic()
            answers = asyncio.run(post_all(f"http://127.0.0.1:{port}/webhooks/github", args.requests, body))
            elapsed = time.monotonic() - started
            after = rss_mb(server.pid)
            holder.execute("ROLLBACK")
        finally:
            server.terminate()
            server.wait(30)
    print(f"{args.requests} requests of {len(body)} B against a locked store in {elapsed:.1f} s")
    print(f"answers: {dict(sorted(answers.items()))}")
    print(f"serve RSS: {before:.0f} MB before, {after:.0f} MB after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
