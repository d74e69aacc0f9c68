"""Every figure the README (and any docs/ page it links) quotes comes from a results file in the repository.

A *figure* is a measured or stated quantity: a number with a unit (×, %, ms, s, min, GB, MB, GFLOP/s)
or a decimal below 1 with at least two places (Dice). Outside code (fenced or in backticks), each paragraph, list item or
table row holding figures must name its sources - repository files in backticks or as links
(``benchmarks/results/precision.md``, a model card ``E2MISegModule/Resources/Models/NAME.md``, ...) -
in itself or in the heading of its section, and every figure must appear in one of them (a source value
that rounds to the figure counts: 0.8952 in a card is quoted as 0.895). The block between
``<!-- benchmarks:start -->`` and ``<!-- benchmarks:end -->`` is the result files verbatim
(checked in test_benchmarks.py). A figure with no source fails here, so it gets one or goes.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ROOT

UNIT = r"(?:×(?!\d)|x(?![\w.])|\s?%|\s?ms\b|\s?s\b|\s?min\b|\s?minutes\b|\s?GB\b|\s?MB\b|\s?GiB\b|\s?MiB\b|\s?GFLOP/s)"
NUMBER = r"(?<![\w.])(\d+(?:\.\d+)?)"
FIGURE = re.compile(NUMBER + r"(?:\s?[–-]\s?(\d+(?:\.\d+)?))?" + UNIT + r"|(?<![\w.])(0\.\d{2,})(?![\w.])")
SOURCE = re.compile(r"`([\w./-]+\.(?:md|json|csv))`|\]\(([\w./-]+\.(?:md|json|csv))(?:#[\w-]*)?\)")
LINKED_DOC = re.compile(r"\]\((docs/[\w./-]+\.md)(?:#[\w-]*)?\)")
QUOTED = re.compile(r"<!-- benchmarks:start -->.*?<!-- benchmarks:end -->", re.S)
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def documents() -> list[Path]:
    """README.md and every docs/ page it links (where benchmark detail may live)."""
    readme = ROOT / "README.md"
    linked = sorted({ROOT / m for m in LINKED_DOC.findall(readme.read_text(encoding="utf-8")) if (ROOT / m).is_file()})
    return [readme, *linked]


def blocks(text: str) -> list[tuple[str, str]]:
    """(heading, block) for each paragraph, list item or table row outside code and quoted results."""
    text = FENCE.sub("", QUOTED.sub("", text))
    found, heading, current = [], "", []
    for line in text.splitlines() + [""]:
        starts_item = line.lstrip().startswith(("- ", "* ", "|")) or re.match(r"\s*\d+\.\s", line)
        if line.startswith("#") or not line.strip() or starts_item:
            if current:
                found.append((heading, "\n".join(current)))
            current = []
            if line.startswith("#"):
                heading = line
                continue
        if line.strip():
            current.append(line)
    return found


def figures(block: str) -> list[str]:
    out = []
    prose = re.sub(r"`[^`]*`", "", block)  # code spans are commands, paths and quoted messages, not figures
    for match in FIGURE.finditer(prose):
        out += [g for g in match.groups() if g]
    return out


def source_numbers(paths: set[str], base: Path) -> list[float]:
    numbers = []
    for name in paths:
        for candidate in (ROOT / name, base.parent / name):
            if candidate.is_file():
                numbers += [float(n) for n in re.findall(r"\d+(?:\.\d+)?", candidate.read_text(encoding="utf-8"))]
                break
    return numbers


def comes_from(figure: str, numbers: list[float]) -> bool:
    places = len(figure.split(".")[1]) if "." in figure else 0
    value = float(figure)
    return any(round(n, places) == value for n in numbers)


def unsourced(path: Path) -> list[str]:
    problems = []
    for heading, block in blocks(path.read_text(encoding="utf-8")):
        quoted = figures(block)
        if not quoted:
            continue
        cited = {a or b for a, b in SOURCE.findall(block + "\n" + heading)}
        numbers = source_numbers(cited, path)
        missing = [f for f in quoted if not comes_from(f, numbers)]
        if missing:
            first = block.strip().splitlines()[0][:90]
            problems.append(f"{path.name}: {', '.join(missing)} in '{first}...' "
                            + (f"not found in {', '.join(sorted(cited))}" if cited else "cites no results file"))
    return problems


@pytest.mark.parametrize("path", documents(), ids=lambda p: p.name)
def test_every_figure_comes_from_a_cited_results_file(path):
    problems = unsourced(path)
    assert not problems, "\n".join(problems)


def test_the_check_catches_a_figure_without_a_source(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Speed\n\nIt is 47.5× faster (`benchmarks/results/inference_vs_monai.md`).\n\n"
                      "Dice 0.895 with no source.\n\nE2MISeg is 3.08× faster (`benchmarks/results/inference_vs_monai.md`).\n",
                      encoding="utf-8")
    problems = unsourced(readme)
    assert len(problems) == 2 and "47.5" in problems[0] and "cites no results file" in problems[1]
