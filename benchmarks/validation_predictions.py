"""Each bundled model's output on a few of its validation cases, computed once and cached.

The correction-effort and uncertainty-ranking benchmarks start from the same predictions: the card's
default settings (``e2miseg.predict`` with nothing overridden, as the module's Segment button runs it),
with the class probabilities kept only as their normalised entropy (the map the module's uncertainty
overlay and "Next uncertain edge" use). Cases come from the card's own split
(``provenance.split.val_cases``), read in place from the shared data folder (MSD layout), never copied.

The cache key holds the checkpoint's sha256, so re-exported weights are predicted afresh.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
MODELS = ROOT / "E2MISegModule" / "Resources" / "Models"
DEFAULT_CACHE = ROOT / "runs" / "validation_predictions"  # runs/ is git-ignored
if str(ROOT / "E2MISegModule") not in sys.path:
    sys.path.insert(0, str(ROOT / "E2MISegModule"))


class BenchmarkInputError(Exception):
    """Bad benchmark arguments or missing data: reported as one line, exit status 2."""


@dataclass
class Case:
    name: str
    image: sitk.Image          # the input as read (its intensities are what the stroke effect follows)
    reference: np.ndarray      # (z, y, x) label values
    labels: np.ndarray         # (z, y, x) the model's output with the card's defaults
    uncertainty: np.ndarray    # (z, y, x) normalised entropy of the network's probabilities
    predict_s: float           # seconds the prediction took when it was made (cached: the first run's)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.image.GetSpacing()[::-1])


def add_case_options(parser: argparse.ArgumentParser, results: Path) -> None:
    """The options every benchmark over these cached validation predictions takes (model, how many cases,
    where the data, the cache and the results live), so their command lines read the same."""
    parser.add_argument("--model", required=True, help="bundled model name (E2MISegModule/Resources/Models/NAME.safetensors)")
    parser.add_argument("--cases", type=int, default=6, help="validation cases, spread evenly over the card's split (default 6)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding the MSD datasets (default ../shared/data)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where predictions are cached (default runs/validation_predictions)")
    parser.add_argument("--results", type=Path, default=results, help="results folder (default benchmarks/results)")


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that reproduces this run, as recorded beside its results."""
    return f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:])


def model_path(name: str) -> Path:
    path = MODELS / f"{name}.safetensors"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in MODELS.glob("*.safetensors")))
        raise BenchmarkInputError(f"no bundled model '{name}'; use one of {known}")
    return path


def pick_evenly(names: list[str], count: int) -> list[str]:
    """``count`` names spread evenly over the list (first and last included), in list order."""
    if count <= 0:
        raise BenchmarkInputError(f"--cases must be at least 1, not {count}")
    if count >= len(names):
        return list(names)
    if count == 1:
        return [names[0]]
    return [names[round(i * (len(names) - 1) / (count - 1))] for i in range(count)]


def validation_names(card: dict, count: int) -> list[str]:
    split = card.get("provenance", {}).get("split", {})
    names = split.get("val_cases")
    if not names:
        raise BenchmarkInputError(f"the card of {card['name']} names no validation cases (provenance.split.val_cases)")
    return pick_evenly(list(names), count)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_cases(name: str, count: int, data: Path = DATA, cache: Path = DEFAULT_CACHE, log=print) -> tuple[dict, list[Case]]:
    """The model's card and ``count`` validation cases with their (cached) predictions."""
    from e2miseg.checkpoint import read_card

    path = model_path(name)
    card = read_card(path)
    dataset = data / Path(card["provenance"]["dataset_path"]).name
    if not (dataset / "imagesTr").is_dir():
        raise BenchmarkInputError(f"no MSD dataset at {dataset} (imagesTr/, labelsTr/); pass --data")
    folder = cache / f"{name}-{_sha256(path)[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    model = None
    cases = []
    for case_name in validation_names(card, count):
        image_path, label_path = dataset / "imagesTr" / f"{case_name}.nii.gz", dataset / "labelsTr" / f"{case_name}.nii.gz"
        if not image_path.is_file() or not label_path.is_file():
            raise BenchmarkInputError(f"validation case {case_name} of {name} is not in {dataset}")
        image = sitk.ReadImage(str(image_path))
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))).astype(np.uint8)
        stored = folder / f"{case_name}.npz"
        if stored.is_file():
            with np.load(stored) as saved:
                labels, uncertainty, seconds = saved["labels"], saved["uncertainty"], float(saved["predict_s"])
        else:
            if model is None:
                import e2miseg

                model, card = e2miseg.load_model(str(path), device="cpu")
            labels, uncertainty, seconds = _predict(image, model, card)
            partial = stored.with_suffix(".part.npz")
            np.savez_compressed(partial, labels=labels, uncertainty=uncertainty, predict_s=seconds)
            partial.replace(stored)  # a run stopped half-way leaves no truncated cache entry
            log(f"  predicted {case_name} in {seconds:.1f} s")
        if labels.shape != reference.shape:
            raise BenchmarkInputError(f"{case_name}: prediction {labels.shape} and reference {reference.shape} differ in shape")
        cases.append(Case(case_name, image, reference, labels, uncertainty, seconds))
    return card, cases


def _predict(image: sitk.Image, model, card: dict) -> tuple[np.ndarray, np.ndarray, float]:
    import e2miseg
    from e2miseg.edges.uncertainty import uncertainty_image

    start = time.perf_counter()
    labels, probabilities = e2miseg.predict(image, model, card, return_probabilities=True)
    seconds = time.perf_counter() - start
    uncertainty = sitk.GetArrayFromImage(uncertainty_image(probabilities)).astype(np.float32)
    return sitk.GetArrayFromImage(labels).astype(np.uint8), uncertainty, seconds


def label_values(card: dict) -> list[int]:
    return [int(entry["value"]) for entry in card["labels"]]
