"""Rewrite one benchmark's section of docs/benchmarks.md, or append it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DOCS", "write_section"]

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(title: str, body: str) -> None:
    """Put `## title` then body in docs/benchmarks.md, replacing that section if present."""
    heading = f"## {title}\n"
    section = heading + "\n" + body.rstrip("\n") + "\n"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    start = text.find(heading)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start)
        text = text[:start] + section + ("\n" + text[end + 1 :] if end != -1 else "")
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)
