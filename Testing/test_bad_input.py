"""Bad input through the command line: one clear line, a documented exit code, nothing written or lost.

Every case of ``bad_inputs.CASES`` runs twice: as a real ``e2miseg predict`` subprocess with an
existing output file (which must survive byte for byte), and in-process through ``main()`` with no
output (which must not appear). Either way the folder holding the case is snapshotted before and
after: no new file (temporary or final) and no changed byte.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from bad_inputs import CASES, BadInput, good_array, volume
from conftest import ROOT
from e2miseg.cli import main
from helpers import make_e2miseg_checkpoint

SENTINEL = b"an earlier segmentation that must survive\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_e2miseg_checkpoint(tmp_path_factory.mktemp("models") / "tiny.safetensors", spacing=(1.5, 1.5, 1.5))


@pytest.fixture(autouse=True)
def empty_store(tmp_path_factory, monkeypatch):
    # store-name lookups see an empty user store, whatever is installed on the machine
    monkeypatch.setenv("E2MISEG_MODELS", str(tmp_path_factory.mktemp("store")))
    monkeypatch.setenv("E2MISEG_RUNTIME", "torch")  # no OpenVINO conversion: these runs test validation, not speed


def cli_env(**extra: str) -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT / "E2MISegModule"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "E2MISEG_RUNTIME": "torch",
            "E2MISEG_MODELS": os.environ["E2MISEG_MODELS"], "HOME": os.environ.get("HOME", "/tmp"), **extra}


def run_cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "e2miseg.cli", *args], capture_output=True, text=True, encoding="utf-8", cwd=ROOT,
                          env=cli_env(**(env or {})), timeout=300, **kwargs)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def predict_args(case: BadInput, folder: Path, checkpoint: Path) -> list[str]:
    if case.command == "refine":
        return ["refine", *map(str, case.inputs), "-o", str(folder / case.output_name), *case.args]
    if case.command == "models":
        return ["models", *case.args]
    return ["predict", *map(str, case.inputs), "-o", str(folder / case.output_name), "--model", case.model or str(checkpoint),
            "--device", "cpu", *case.args]


def assert_one_clear_line(stderr: str, case: BadInput) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("e2miseg: error: ") and case.fragment in lines[0], lines[0]
    assert "Traceback" not in stderr
    assert ";" in lines[0]  # problem; fix


@pytest.mark.parametrize("name", list(CASES))
def test_cli_subprocess_keeps_existing_output(tmp_path, checkpoint, name):
    case = CASES[name](tmp_path)
    output = tmp_path / case.output_name
    if output.parent.is_dir() and not output.exists():
        output.write_bytes(SENTINEL)
    before = snapshot(tmp_path)
    watched = {p: p.read_bytes() for p in case.watch if p.is_file()}
    result = run_cli(*predict_args(case, tmp_path, checkpoint), env=case.env)
    assert result.returncode == case.code, result.stderr
    assert_one_clear_line(result.stderr, case)
    assert snapshot(tmp_path) == before  # nothing new (no temporary files), nothing changed
    assert {p: p.read_bytes() for p in case.watch if p.is_file()} == watched


@pytest.mark.parametrize("name", list(CASES))
def test_in_process_creates_no_output(tmp_path, checkpoint, capsys, monkeypatch, name):
    case = CASES[name](tmp_path)
    output = tmp_path / case.output_name
    existed = output.exists() or output.is_symlink()
    before = snapshot(tmp_path)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    assert main(predict_args(case, tmp_path, checkpoint)) == case.code
    assert_one_clear_line(capsys.readouterr().err, case)
    assert (output.exists() or output.is_symlink()) == existed
    assert snapshot(tmp_path) == before


def _rows_with_api_form() -> list[str]:
    import tempfile

    names = []
    for name, build in CASES.items():
        with tempfile.TemporaryDirectory() as folder:
            if build(Path(folder)).api is not None:
                names.append(name)
    return names


@pytest.mark.parametrize("name", _rows_with_api_form())
def test_api_gives_the_same_error(tmp_path, checkpoint, name):
    """The rows with an API form: the same exception class (exit code) and message, and nothing written."""
    from e2miseg.errors import E2MISegError

    case = CASES[name](tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(E2MISegError) as caught:
        case.api(checkpoint)
    assert caught.value.exit_code == case.code and case.fragment in str(caught.value), str(caught.value)
    assert snapshot(tmp_path) == before


def test_debug_shows_the_traceback(tmp_path, checkpoint):
    case = CASES["constant volume"](tmp_path)
    result = run_cli("--debug", *predict_args(case, tmp_path, checkpoint))
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "InputImageError" in result.stderr


def test_huge_header_is_refused_before_reading_voxels(tmp_path, checkpoint):
    """The NRRD claims 256 GB but holds 64 bytes: reading voxels would fail differently (or exhaust memory)."""
    from bad_inputs import write_huge_nrrd
    from e2miseg.checkpoint import read_card
    from e2miseg.errors import ResourceError
    from e2miseg.validate import read_checked_channels

    path = write_huge_nrrd(tmp_path / "huge.nrrd")
    with pytest.raises(ResourceError, match="GB of memory"):
        read_checked_channels([path], read_card(checkpoint))
    # a modest volume refused by an explicit memory limit, also before its voxels are read
    from bad_inputs import write_mha
    small = write_mha(tmp_path / "small.mha", "32 32 32", data=b"")  # no voxel data at all
    with pytest.raises(ResourceError, match="crop the volume"):
        read_checked_channels([small], read_card(checkpoint), memory_limit=1024)


def test_memory_limit_from_environment(tmp_path, checkpoint):
    sitk.WriteImage(volume(good_array()), str(tmp_path / "good.nrrd"))
    env = {**cli_env(), "E2MISEG_MEMORY_LIMIT_MB": "0.01"}
    result = subprocess.run([sys.executable, "-m", "e2miseg.cli", "predict", str(tmp_path / "good.nrrd"), "-o",
                             str(tmp_path / "o.seg.nrrd"), "--model", str(checkpoint)], capture_output=True, text=True, encoding="utf-8", env=env)
    assert result.returncode == 6 and "MB of memory but 0.0 MB is available" in result.stderr
    assert not (tmp_path / "o.seg.nrrd").exists()


@pytest.mark.machine("a non-root user")
@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions; the file-as-folder case covers the check")
def test_unwritable_output_folder(tmp_path, checkpoint):
    sitk.WriteImage(volume(good_array()), str(tmp_path / "good.nrrd"))
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "out.seg.nrrd").write_bytes(SENTINEL)
    locked.chmod(0o555)
    try:
        result = run_cli("predict", str(tmp_path / "good.nrrd"), "-o", str(locked / "out.seg.nrrd"), "--model", str(checkpoint))
    finally:
        locked.chmod(0o755)
    assert result.returncode == 5 and "is not writable; choose a folder you can write to" in result.stderr
    assert (locked / "out.seg.nrrd").read_bytes() == SENTINEL and len(list(locked.iterdir())) == 1


@pytest.mark.machine("a read-only folder (/proc/sys)")
@pytest.mark.skipif(os.access("/proc/sys", os.W_OK), reason="/proc/sys is writable here; no read-only folder to try")
def test_read_only_filesystem_output(tmp_path, checkpoint):
    sitk.WriteImage(volume(good_array()), str(tmp_path / "good.nrrd"))
    # /proc/sys is read-only for everyone (root included) inside containers; nothing is ever created there
    result = run_cli("predict", str(tmp_path / "good.nrrd"), "-o", "/proc/sys/e2miseg-out.seg.nrrd", "--model", str(checkpoint))
    assert result.returncode == 5 and "is not writable" in result.stderr


def test_write_failure_at_rename_keeps_existing_output(tmp_path, monkeypatch):
    """A disk that fills up as the result is moved into place: OutputError, old file intact, no temporary left."""
    from e2miseg import io as e2io
    from e2miseg.errors import OutputError

    target = tmp_path / "labels.nii.gz"
    target.write_bytes(SENTINEL)

    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(e2io.os, "replace", full_disk)
    labels = volume(np.zeros((4, 5, 6), np.uint8))
    with pytest.raises(OutputError, match=r"No space left on device\); check free space"):
        e2io.write_labelmap(labels, target)
    assert target.read_bytes() == SENTINEL and [p.name for p in tmp_path.iterdir()] == ["labels.nii.gz"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_cancel_mid_run_writes_nothing(tmp_path, checkpoint, signum):
    """SIGTERM (the Slicer module's Cancel) or Ctrl-C during inference: exit 130, the old output untouched."""
    # 48x64x64 voxels at 1 mm -> 32x43x43 at 1.5 mm: dozens of 16^3 windows, so inference is under way when signalled
    sitk.WriteImage(volume(good_array((48, 64, 64))), str(tmp_path / "big.nrrd"))
    output = tmp_path / "out.seg.nrrd"
    output.write_bytes(SENTINEL)
    before = snapshot(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "e2miseg.cli", "predict", str(tmp_path / "big.nrrd"), "-o", str(output),
                                "--model", str(checkpoint), "--device", "cpu", "--json-progress", "--step", "0.25"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", cwd=ROOT, env=cli_env())
    try:
        for line in process.stdout:
            if '"stage": "infer"' in line and '"done": 0' not in line:
                process.send_signal(signum)
                break
        remaining, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    if signum == signal.SIGTERM:  # stopped between tiles by the cancel token
        assert "cancelled by the user; nothing was written" in stderr
        assert '"stage": "error"' in remaining and '"exit_code": 130' in remaining
    else:
        assert "e2miseg: cancelled; nothing was written" in stderr
    assert '"stage": "done"' not in remaining
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("dtype,offset", [(np.uint32, 4_000_000_000), (np.int64, 1 << 40), (np.int32, -2_000_000_000), (np.uint16, 60_000)])
def test_wide_integer_images_are_normalised_exactly(tmp_path, dtype, offset):
    """uint32/int64 voxels near the top of their range: float32 would round them to a few values.

    They are accepted and normalised in float64, so the z-scored intensities equal those of the
    same contrast stored without the offset.
    """
    from e2miseg.card import validate_card
    from e2miseg.io import read_channels
    from e2miseg.preprocess import preprocess
    from helpers import make_card

    pattern = (np.random.default_rng(4).integers(0, 1000, (10, 12, 14))).astype(np.int64)
    path = tmp_path / "wide.nrrd"
    sitk.WriteImage(volume((pattern + offset).astype(dtype)), str(path))
    (image,) = read_channels(path)
    assert sitk.GetArrayViewFromImage(image).dtype == dtype  # read as stored, not wrapped
    card = validate_card(make_card(spacing=None))
    array, _ = preprocess([image], card)
    expected = (pattern - pattern.mean()) / pattern.std()
    np.testing.assert_allclose(array[0], expected, atol=1e-5)


def test_wide_integer_image_runs_end_to_end(tmp_path, checkpoint):
    import e2miseg

    path = tmp_path / "wide.nii.gz"
    sitk.WriteImage(volume((good_array().astype(np.int64) + (1 << 40))), str(path))
    model, _ = e2miseg.load_model(checkpoint, device="cpu")
    labels = e2miseg.predict(str(path), model)
    reference = e2miseg.predict(volume(good_array()), model)  # same contrast without the offset
    assert labels.GetSize() == (16, 14, 12)
    assert np.mean(sitk.GetArrayViewFromImage(labels) == sitk.GetArrayViewFromImage(reference)) > 0.99


def test_multi_member_gzip_nifti_is_complete(tmp_path):
    """bgzip/pigz-style files hold several gzip members; the trailer check must not call them truncated."""
    import gzip

    from e2miseg.io import check_complete, read_image

    sitk.WriteImage(volume(good_array()), str(tmp_path / "plain.nii"))
    raw = (tmp_path / "plain.nii").read_bytes()
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    check_complete(tmp_path / "members.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(tmp_path / "members.nii.gz")), good_array())
    (tmp_path / "cut.nii").write_bytes(raw[:-10])  # uncompressed NIfTI: the file size tells
    from e2miseg.errors import InputImageError

    with pytest.raises(InputImageError, match="cut.nii is truncated"):
        check_complete(tmp_path / "cut.nii")


def test_cohort_output_that_is_a_file(tmp_path, checkpoint, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    sitk.WriteImage(volume(good_array()), str(cases / "case1.nii.gz"))
    existing = tmp_path / "results.csv"
    existing.write_bytes(SENTINEL)
    assert main(["predict", str(cases), "-o", str(existing), "--model", str(checkpoint)]) == 5
    line = capsys.readouterr().err.strip()
    assert line.count("\n") == 0 and "is a file but a folder of cases needs an output folder" in line
    assert existing.read_bytes() == SENTINEL


@pytest.mark.parametrize("call,fragment", [
    (lambda m, c: __import__("e2miseg").load_model(np.zeros(3)), "takes a model name"),
    (lambda m, c: __import__("e2miseg").load_model((m, c)), "got the (model, card) tuple load_model returns; unpack it"),
    (lambda m, c: __import__("e2miseg").predict(volume(good_array()), (m, c)), "predict() got the (model, card) tuple"),
], ids=["load_model(ndarray)", "load_model(tuple)", "predict(image, tuple)"])
def test_api_misuse_is_a_type_error_that_says_what_to_pass(checkpoint, call, fragment):
    """Was: 'expected str, bytes or os.PathLike object, not tuple' from deep inside pathlib."""
    import e2miseg

    model, card = e2miseg.load_model(checkpoint, device="cpu")
    with pytest.raises(TypeError) as caught:
        call(model, card)
    assert fragment in str(caught.value)


def test_complex_voxels_through_the_api_are_refused(checkpoint):
    """Was: the imaginary part silently dropped."""
    import e2miseg
    from e2miseg.errors import InputImageError

    rng = np.random.default_rng(0)
    array = (rng.normal(100, 20, (12, 14, 16)) + 1j * rng.normal(0, 20, (12, 14, 16))).astype(np.complex64)
    model, _ = e2miseg.load_model(checkpoint, device="cpu")
    with pytest.raises(InputImageError, match="has complex voxels; pass the magnitude"):
        e2miseg.predict(sitk.GetImageFromArray(array), model)


def test_stuck_read_ends_on_sigterm_within_a_second(tmp_path):
    """A read blocked in C (here: a FIFO opened past the stat check, as a stuck network mount would block)
    ends on SIGTERM within a second: exit 130, nothing written."""
    import time

    os.mkfifo(tmp_path / "pipe.nii.gz")
    code = ("from e2miseg import cli\nc = cli._cancel_on_signal()\nwith c.reading():\n    print('reading', flush=True)\n"
            f"    open({str(tmp_path / 'pipe.nii.gz')!r}, 'rb').read()\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        assert process.stdout.readline().strip() == "reading"
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        start = time.monotonic()
        process.wait(timeout=10)
        waited = time.monotonic() - start
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130 and "cancelled by the user while reading the input" in process.stderr.read()
    assert waited < 1.0, waited


def test_empty_home_uses_the_accounts_home(monkeypatch):
    """Was: HOME="" put the model store and caches at /.e2miseg."""
    import pwd

    from e2miseg.environment import home
    from e2miseg.runtime import cache_dir
    from e2miseg.store import user_models_dir

    monkeypatch.setenv("HOME", "")
    monkeypatch.delenv("E2MISEG_MODELS", raising=False)
    monkeypatch.delenv("E2MISEG_CACHE", raising=False)
    assert home() == Path(pwd.getpwuid(os.getuid()).pw_dir)
    assert user_models_dir() == home() / ".e2miseg" / "models" and cache_dir() == home() / ".e2miseg" / "cache"
