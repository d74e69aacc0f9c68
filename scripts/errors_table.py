"""Print docs/errors.md's issue-21 table from Testing/bad_inputs.py: one row per case, with the test
that runs it through the CLI (subprocess and in-process) and, where it has one, through the API.

    python scripts/errors_table.py > /tmp/rows.md
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "Testing"), str(ROOT / "E2MISegModule")]

from bad_inputs import CASES  # noqa: E402

print("| # | case | expected message contains | exit | note (what 3cf4670 did, where it differed) | tests |")
print("|---|---|---|---|---|---|")
for number, (name, build) in enumerate(CASES.items(), 1):
    with tempfile.TemporaryDirectory() as folder:
        case = build(Path(folder))
    ident = f"[{name}]"
    tests = [f"`test_bad_input.py::test_cli_subprocess_keeps_existing_output{ident}`", f"`::test_in_process_creates_no_output{ident}`"]
    if case.api is not None:
        tests.append(f"`::test_api_gives_the_same_error{ident}`")
    command = case.command + (" " + " ".join(case.args) if case.args else "")
    fragment = case.fragment.replace("|", "\\|")
    print(f"| {number} | {name} (`{command}`) | `{fragment}` | {case.code} | {case.notes} | {'<br>'.join(tests)} |")
