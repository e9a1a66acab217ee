"""The answer cache: one SQLite file per run folder, keyed by (image sha256, questions, judge, prompt version)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    questions TEXT NOT NULL,
    judge TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    answer TEXT NOT NULL,
    time REAL NOT NULL
)
"""


def cache_key(sha256: str, questions: tuple[str, str], judge: str, prompt_version: str) -> str:
    return hashlib.sha256(json.dumps([sha256, list(questions), judge, prompt_version]).encode()).hexdigest()


class Cache:
    """Answers only (errors are never stored, so a rerun asks again). Every put commits, so Ctrl-C loses nothing.

    Used from one thread: judges run in a pool, and the main thread stores what they return.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(_SCHEMA)
        self.db.commit()

    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, sha256: str, questions: tuple[str, str], judge: str, prompt_version: str, answer: dict) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (key, sha256, json.dumps(list(questions)), judge, prompt_version, json.dumps(answer), time.time()))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
