"""Test-only start-up hook for engine subprocesses (put on PYTHONPATH by Testing/test_slicer_logic.py).

With ``E2MISEG_TEST_HOLD_AT=stage[,stage...]`` the engine stops right after printing its first
``--json-progress`` line for one of those stages and waits until it is killed. A test can then cancel
or kill a run that is certainly still running, instead of racing a run that may finish first.
"""
import json
import os
import sys
import threading

_STAGES = {stage for stage in os.environ.get("E2MISEG_TEST_HOLD_AT", "").split(",") if stage}


class _HoldingStdout:
    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        written = self._stream.write(text)
        if text.startswith("{"):
            try:
                stage = json.loads(text).get("stage")
            except ValueError:
                stage = None
            if stage in _STAGES:
                if not text.endswith("\n"):  # print() writes the newline separately; the reader needs it now
                    self._stream.write("\n")
                self._stream.flush()
                # held until the test cancels or kills this process; a guard ends a forgotten one
                threading.Event().wait(float(os.environ.get("E2MISEG_TEST_HOLD_SECONDS", "300")))
                sys.stderr.write("e2miseg: test hold expired without a cancel or kill\n")
                sys.stderr.flush()
                os._exit(99)
        return written

    def __getattr__(self, name):
        return getattr(self._stream, name)


if _STAGES:
    sys.stdout = _HoldingStdout(sys.stdout)
