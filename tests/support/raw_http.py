"""Raw HTTP for hostile-input tests, and a hold on the intake's group commit."""

from __future__ import annotations

import socket
import threading
from typing import Any
from urllib.parse import urlsplit

import pytest


def raw_request(
    base_url: str, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
) -> tuple[int, bytes]:
    """Send one request exactly as written (repeats and odd values kept); the status and body."""
    parts = urlsplit(base_url)
    lines = [f"{method} {path} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


def hold_commits(ingestor: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make the intake's first write of rows wait until ``release`` is set (``entered``: it waits).

    Requests arriving meanwhile gather in the inbox and are written together as the next batch.
    """
    entered, release = threading.Event(), threading.Event()
    commit = ingestor._commit

    def held(rows: list[Any]) -> Any:
        if rows and not release.is_set():
            entered.set()
            release.wait(30)
        return commit(rows)

    monkeypatch.setattr(ingestor, "_commit", held)
    return entered, release
