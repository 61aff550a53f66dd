#!/usr/bin/env python3
"""Write the parameter table of docs/index.md from ``pgpoolkit._config.PARAMETERS``.

The table sits between the markers ``<!-- parameters: start -->`` and ``<!-- parameters: end
-->``; ``--check`` (used by CI) fails if it differs from what the declaration says.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "index.md"
START, END = "<!-- parameters: start -->", "<!-- parameters: end -->"


def table() -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from pgpoolkit._config import PARAMETERS

    rows = ["| parameter | default | meaning |", "|---|---|---|"]
    rows += [f"| `{p.name}` | {p.default} | {p.doc} |" for p in PARAMETERS]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the table is stale")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    try:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        print(f"{DOC.name}: the markers {START} / {END} are missing", file=sys.stderr)
        return 1
    expected = f"{head}{START}\n{table()}\n{END}{tail}"
    if expected == text:
        return 0
    if args.check:
        print(
            "docs/index.md: stale parameter table (run python tools/params_table.py)",
            file=sys.stderr,
        )
        return 1
    DOC.write_text(expected)
    print("wrote docs/index.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
