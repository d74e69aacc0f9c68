"""Copy the latest benchmark tables (with their machine lines) into docs/benchmarks.md ("Speed and memory",
linked from the README).

That page quotes, between the markers ``<!-- benchmarks:start -->`` and ``<!-- benchmarks:end -->``,
the Markdown result files of the speed benchmarks, exactly as the benchmarks wrote them, so the
numbers a reader sees are the ones on disk (Testing/test_benchmarks.py checks they match).

    .venv/bin/python benchmarks/quote_in_readme.py        # run_all.sh calls it at the end
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
QUOTED = ("inference_vs_monai", "conv_roofline", "precision", "training_throughput", "memory_ct")
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def quoted_block(results: Path = RESULTS) -> str:
    parts = []
    for name in QUOTED:
        path = results / f"{name}.md"
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").strip().splitlines()
        # the file's "# name" title becomes a level-4 heading inside the page
        body = [f"#### {lines[0].lstrip('# ').strip()} (`benchmarks/results/{name}.md`)"] + lines[1:]
        parts.append("\n".join(body))
    return "\n\n".join(parts)


PAGE = ROOT / "docs" / "benchmarks.md"


def quote(readme: Path = PAGE, results: Path = RESULTS) -> bool:
    """Rewrite the quoted block; return True when the page changed."""
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{quoted_block(results)}\n{END}{tail}"
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    changed = quote()
    print("docs/benchmarks.md: benchmark tables updated" if changed else "docs/benchmarks.md: benchmark tables already current")
    sys.exit(0)
