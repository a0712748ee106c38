"""bench/stages.py, which the side-by-side bench loads into the workers with ``--stages``: it
counts SQLite's write lock, each wait for it and each hold, in a process of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from bench.stages import summary, totals

ROOT = Path(__file__).resolve().parents[1]


def test_the_write_lock_s_waits_and_holds_are_counted(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from bench import stages
        stages.install(sys.argv[1])
        from gateway.database import create_store_engine
        engine = create_store_engine(f"sqlite:///{sys.argv[1]}/store.db")
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (v INTEGER)")
        for value in range(3):
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO t (v) VALUES (?)", (value,))
                time.sleep(0.02)
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT count(*) FROM t").scalar()
        stages.flush()
        """
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, check=True, timeout=60)
    counted = totals(tmp_path)
    calls, held, _ = counted["write lock held"]
    assert calls == 3  # the three inserts (Python's sqlite3 begins no transaction for the DDL)
    assert held >= 3 * 0.02  # each held through its sleep
    assert counted["wait for write lock"][0] == 3
    assert summary(tmp_path, 3).splitlines()[1].startswith("write lock held")  # the longest first
