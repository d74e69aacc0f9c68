"""``e2miseg`` command line: predict, models. Errors are one line and a documented exit code.

Exit codes: 0 ok; 1 other user error; 2 bad arguments; 3 input image; 4 checkpoint/model;
5 output; 6 not enough memory; 130 cancelled; 70 internal error (a bug: rerun with --debug).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from .errors import E2MISegError

INTERNAL_ERROR_EXIT = 70


def _json_line(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


class SignalCancel(threading.Event):
    """The cancel token of a CLI run: SIGTERM (the Slicer module's Cancel) sets it, and the run stops
    between tiles. While the run only reads (``reading()``), a signal ends the process at once: a read
    blocked in C (a stuck network mount) never returns to Python, so a Python-level handler would not
    run, but the interpreter's C handler still writes the signal number to the wakeup pipe that a
    watcher thread reads. Nothing has been written at that point, so exiting loses nothing."""

    def __init__(self) -> None:
        super().__init__()
        self._reading = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        self._reading += 1
        try:
            yield
        finally:
            self._reading -= 1

    def watch(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data:
                self.set()
            if self._reading and (signal.SIGTERM in data or signal.SIGINT in data):
                os.write(2, b"e2miseg: error: cancelled by the user while reading the input; nothing was written\n")
                os._exit(130)


def _cancel_on_signal() -> SignalCancel:
    """SIGTERM (sent by the Slicer module's Cancel) sets the cancel token so the run stops between tiles."""
    cancel = SignalCancel()
    try:
        signal.signal(signal.SIGTERM, lambda *_: cancel.set())
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        threading.Thread(target=cancel.watch, args=(read_end,), name="e2miseg-signal-watch", daemon=True).start()
    except ValueError:  # not in the main thread (e.g. called from tests through main())
        pass
    return cancel


def _settings_of(args):
    """The run settings the flags decide (absent flags stay None: the model card decides those)."""
    from .settings import Settings

    return Settings.from_args(args)


def cmd_predict(args) -> int:
    from .cohort import is_cohort_folder, run_cohort

    inputs = [Path(p) for p in args.images]
    if len(inputs) == 1 and is_cohort_folder(inputs[0]):
        return run_cohort(inputs[0], Path(args.output), args)
    cancel = _cancel_on_signal()
    settings = _settings_of(args)
    with cancel.reading():  # nothing is written before the result: a signal may end the run at once
        output = Path(args.output)
        # before importing torch: a typo costs milliseconds, not a model load
        from .paths import check_predict_paths

        check_predict_paths(inputs, output, args.preview, args.uncertainty)
        from .cli_refine import check_predict_edge_args, write_prediction_uncertainty

        check_predict_edge_args(args)
        from .checkpoint import read_card
        from .store import resolve

        # The input is checked against the model's card (header first, then voxels; a label map is
        # refused) before torch loads, so a bad file fails in a second; the checksum is verified when
        # the weights load below.
        card = read_card(resolve(args.model, verify=False).path)
        from .inference import check_step

        check_step(settings.step, card)
        channels = _checked_channels(inputs, card, settings)
        from . import api
        from .cli_progress import StageBar, segment_lines, segment_volumes
        from .io import write_result

        human = not args.json_progress and not args.quiet
        progress = (lambda event: _json_line(event.as_dict())) if args.json_progress else StageBar() if human else None
        model, card = api.load_model(args.model, settings.device or "auto")
    try:
        labels = api.predict(channels, model, card, settings, progress=progress, cancel=cancel,
                             return_probabilities=bool(args.uncertainty))
    finally:
        if isinstance(progress, StageBar):
            progress.close()
    labels, probabilities = labels if args.uncertainty else (labels, None)
    if args.json_progress:
        _json_line({"stage": "write", "done": 0, "total": 1, "eta_s": None, "message": ""})
    write_result(labels, card, output)
    if args.uncertainty:
        write_prediction_uncertainty(probabilities, labels, args.uncertainty)
    volumes = segment_volumes(labels, card)
    if args.preview:
        from .preview import write_preview

        write_preview(channels[0], labels, card, args.preview, title=f"{inputs[0].name}: {card['name']} {card['version']}",
                      volumes=volumes)
    if args.json_progress:
        _json_line({"stage": "done", "done": 1, "total": 1, "eta_s": 0, "output": str(output), "segments": volumes,
                    "preview": args.preview})
    elif human:
        print(f"wrote {output}")
        print("\n".join(segment_lines(volumes)))
        if args.preview:
            print(f"preview: {args.preview}")
        if args.uncertainty:
            print(f"uncertainty: {args.uncertainty}")
    return 0


def _checked_channels(inputs: list[Path], card: dict, settings) -> list:
    """Read and check the input against the card (and refuse a label map) before the model loads."""
    from .label_input import check_not_label_map
    from .settings import resolve as resolve_settings
    from .validate import read_checked_channels

    channels = read_checked_channels([str(p) for p in inputs], card)
    if not resolve_settings(settings, card).accept_label_map:
        check_not_label_map(channels, card, [p.name for p in inputs])
    return channels


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line, like every other error (its usage text is behind --help)."""

    def error(self, message: str):
        print(f"e2miseg: error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="e2miseg", description="Segment medical images with E2MISeg, EHANet and S²aNet models.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="segment one case (one file per channel) or a folder of cases")
    p.add_argument("images", nargs="+", help="image file(s) of one case, a DICOM series folder, or a folder of cases")
    p.add_argument("-o", "--output", required=True, help="output .seg.nrrd / .nii.gz / .nrrd / .mha (a folder for cohorts)")
    p.add_argument("--model", required=True, help="model name from `e2miseg models list` or a .safetensors file")
    from .settings import Settings

    Settings.add_arguments(p.add_argument_group("settings (each defaults to the model card's choice, else the engine's)"))
    p.add_argument("--json-progress", action="store_true", help="print one JSON progress object per line on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, notices or summary; errors only")
    p.add_argument("--preview", help="also write a PNG preview: the image with the segments in three views, with a legend")
    p.add_argument("--format", default=".seg.nrrd", help="output extension for cohort runs (default .seg.nrrd)")
    p.add_argument("--overwrite", action="store_true", help="cohorts: segment again the cases that already have an output")
    from .cli_refine import add_predict_edge_flags, add_refine_parser

    add_predict_edge_flags(p)
    p.set_defaults(func=cmd_predict)

    from .cli_models import add_models_parser

    add_models_parser(sub)
    add_refine_parser(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "models" and args.action in ("info", "import", "convert") and not args.name:
            parser.error(f"models {args.action} needs a model name or file")
    except SystemExit as stop:  # argparse's --help (0) and one-line errors (2): an exit code, in-process too
        return stop.code if isinstance(stop.code, int) else 2
    # One-time notices (e.g. the OpenVINO conversion, which takes a minute) go to stderr as single lines.
    notices = logging.getLogger("e2miseg")
    if not notices.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("e2miseg: %(message)s"))
        notices.addHandler(handler)
        notices.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    try:
        from .environment import check_environment

        check_environment()  # a bad variable fails here, named, before any file or model is read
        return args.func(args)
    except E2MISegError as exc:
        if args.debug:
            raise
        message = str(exc)
        if getattr(args, "json_progress", False):
            _json_line({"stage": "error", "message": message, "exit_code": exc.exit_code})
        print(f"e2miseg: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("e2miseg: cancelled; nothing was written", file=sys.stderr)
        return 130
    except MemoryError:
        if args.debug:
            raise
        print("e2miseg: error: ran out of memory; crop the volume, use --fast, or a machine with more memory", file=sys.stderr)
        return 6
    except Exception as exc:  # a bug: one line for the clinician, the traceback behind --debug
        if args.debug:
            raise
        print(f"e2miseg: internal error: {type(exc).__name__}: {exc} (rerun with --debug and report it)", file=sys.stderr)
        return INTERNAL_ERROR_EXIT


def entry_point() -> None:
    # A shell starts background jobs with Ctrl-C ignored and children inherit that; restore it so
    # SIGINT always cancels a run cleanly (exit 130, nothing written), wherever we were started from.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
