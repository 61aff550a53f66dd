#!/usr/bin/env python3
"""Generate the threaded shell of pgpoolkit from its asyncio source.

The asyncio files under ``src/pgpoolkit/aio/`` are the only hand-written copy of the I/O shells;
this tool writes their threaded twins (``src/pgpoolkit/pool.py``, ``connection.py``) by:

- dropping ``async`` before ``def``/``with``/``for`` and every ``await``;
- renaming ``AsyncX`` -> ``X`` (``AsyncPool`` -> ``Pool``, ``AsyncConnection`` ->
  ``Connection``...), the asyncio primitives of ``_acompat`` (``AWaiter``, ``aspawn``...) to
  their threaded twins, ``__aenter__``/``__aexit__`` to ``__enter__``/``__exit__``;
- moving relative imports up one package level (``from ..x`` -> ``from .x``);
- honouring two markers at the end of a line: ``# sync: CODE`` replaces the line's code with
  CODE in the sync file, and ``# async-only`` drops the line.

Run it after editing a source; ``--check`` (used by CI) fails if a generated file is stale.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "src" / "pgpoolkit"

#: source (asyncio) -> generated (threads)
FILES = {
    PKG / "aio" / "pool.py": PKG / "pool.py",
    PKG / "aio" / "connection.py": PKG / "connection.py",
    PKG / "aio" / "cursor.py": PKG / "cursor.py",
    PKG / "aio" / "transaction_mode.py": PKG / "transaction_mode.py",
    PKG / "aio" / "manager.py": PKG / "manager.py",
}

RENAMES = {
    "AWaiter": "Waiter",
    "ADeadlines": "Deadlines",
    "AEvent": "Event",
    "ALock": "Lock",
    "ABindLock": "BindLock",
    "AGuard": "Guard",
    "AWorker": "Worker",
    "aspawn": "spawn",
    "aspawn_detached": "spawn_detached",
    "agather": "gather",
    "asleep": "sleep",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__anext__": "__next__",
    "asynccontextmanager": "contextmanager",
    "asyncio": "threads",
    "AbstractAsyncContextManager": "AbstractContextManager",
}

_SYNC_MARK = re.compile(r"^(?P<indent>\s*)(?P<code>.*?)\s*# sync: (?P<sync>.*)$")
_ASYNC_ONLY = re.compile(r"#\s*async-only\s*$")
_ASYNC_KW = re.compile(r"\basync (def|with|for)\b")
_AWAIT = re.compile(r"\bawait ")
_ASYNC_NAME = re.compile(r"\b(_?)Async(?=[A-Z])")
_RENAME = re.compile(r"\b(" + "|".join(re.escape(k) for k in RENAMES) + r")\b")
_AWAITABLE = re.compile(r"\bAwaitable\[(\w+)\]")
_REL_IMPORT = re.compile(r"^(\s*from )\.\.(?=\w)", re.MULTILINE)


def convert(source: str, source_name: str) -> str:
    out: list[str] = []
    for line in source.splitlines():
        if _ASYNC_ONLY.search(line):
            continue
        marked = _SYNC_MARK.match(line)
        if marked:
            if marked["sync"].strip():
                out.append(marked["indent"] + marked["sync"].rstrip())
            continue
        line = _ASYNC_KW.sub(r"\1", line)
        line = _AWAIT.sub("", line)
        line = _AWAITABLE.sub(r"\1", line)
        line = _ASYNC_NAME.sub(r"\1", line)
        line = _RENAME.sub(lambda m: RENAMES[m[1]], line)
        out.append(line)
    text = "\n".join(out) + "\n"
    text = _REL_IMPORT.sub(r"\1.", text)
    header = (
        f"# WARNING: generated from {source_name} by tools/async_to_sync.py:\n"
        "# edit the source, not this file.\n"
    )
    return _tidy(header + text, source_name)


def _tidy(text: str, source_name: str) -> str:
    """Sort the imports, drop the ones only the async code used, and turn
    ``for x in y: yield x`` into ``yield from y``, then format (ruff)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--fix-only",
            "--unsafe-fixes",
            "--quiet",
            "--select",
            "I,F401,UP028",
            "--stdin-filename",
            source_name,
            "-",
        ],
        input=text,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    formatted = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--quiet", "--stdin-filename", source_name, "-"],
        input=result.stdout,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return formatted.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    args = parser.parse_args(argv)
    stale = []
    for src, dst in FILES.items():
        expected = convert(src.read_text(), src.relative_to(PKG.parent).as_posix())
        current = dst.read_text() if dst.exists() else None
        if current == expected:
            continue
        if args.check:
            stale.append(dst.relative_to(ROOT).as_posix())
        else:
            dst.write_text(expected)
            print(f"wrote {dst.relative_to(ROOT)}")
    if stale:
        print(
            "stale generated files (run python tools/async_to_sync.py): " + ", ".join(stale),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
