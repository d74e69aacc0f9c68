"""Engine pieces not covered elsewhere: DICOM input, channels as files, normalisation, clean-up, the model store."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import oblique_image
from e2miseg.cli import main
from e2miseg.errors import CheckpointError
from e2miseg.io import read_channels
from e2miseg.postprocess import keep_largest_component, remove_islands
from e2miseg.preprocess import normalize
from helpers import make_e2miseg_checkpoint


def test_dicom_series_folder_keeps_geometry(tmp_path):
    image = sitk.Cast(oblique_image(size=(16, 12, 6)), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    series_uid = "1.2.826.0.1.3680043.2.1125.1"
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        origin = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {"0020|000e": series_uid, "0020|0032": "\\".join(map(str, origin)),
                "0020|0037": "\\".join(map(str, (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]))),
                "0020|0013": str(k), "0008|0060": "MR", "0028|0030": f"{image.GetSpacing()[1]}\\{image.GetSpacing()[0]}",
                "0018|0050": str(image.GetSpacing()[2])}
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"slice{k:03d}.dcm"))
        writer.Execute(plane)
    (back,) = read_channels(tmp_path)
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-4)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-3)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))


def test_channels_from_several_files_must_share_a_grid(tmp_path):
    a, b = oblique_image(seed=1), oblique_image(seed=2)
    sitk.WriteImage(a, str(tmp_path / "a.nrrd"))
    sitk.WriteImage(b, str(tmp_path / "b.nrrd"))
    channels = read_channels([tmp_path / "a.nrrd", tmp_path / "b.nrrd"])
    assert len(channels) == 2
    other = oblique_image(size=(20, 18, 13))
    sitk.WriteImage(other, str(tmp_path / "c.nrrd"))
    with pytest.raises(Exception, match="same grid"):
        read_channels([tmp_path / "a.nrrd", tmp_path / "c.nrrd"])


def test_normalisation_schemes():
    rng = np.random.default_rng(0)
    x = rng.normal(50, 10, (8, 8, 8)).astype(np.float32)
    z = normalize(x, {"scheme": "zscore"})
    assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-3
    x0 = x.copy()
    x0[:4] = 0
    nz = normalize(x0, {"scheme": "nonzero_zscore"})
    assert np.all(nz[:4] == 0) and abs(nz[4:].mean()) < 1e-4 and abs(nz[4:].std() - 1) < 1e-3
    ct = normalize(np.array([-2000, 0, 500, 3000], dtype=np.float32), {"scheme": "ct", "lower": -1000, "upper": 1000, "mean": 0, "std": 500})
    np.testing.assert_allclose(ct, [-2, 0, 1, 2])
    spiky = x.copy()
    spiky[0, 0, 0] = 1e6
    pc = normalize(spiky, {"scheme": "percentile", "lower": 1, "upper": 99})
    assert pc.max() < 5  # the outlier was clipped before the z-score
    assert np.array_equal(normalize(x, {"scheme": "none"}), x)


def test_keep_largest_and_remove_islands():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[1:5, 1:5, 1:5] = 1   # 64 voxels
    labels[7:9, 7:9, 7:9] = 1   # 8 voxels
    labels[0, 9, 9] = 2         # 1 voxel
    labels[5:8, 0:3, 6:9] = 2   # 27 voxels
    kept = keep_largest_component(labels.copy(), [1, 2])
    assert (kept == 1).sum() == 64 and (kept == 2).sum() == 27
    cleaned = remove_islands(labels.copy(), [1, 2], min_volume_mm3=10.0, spacing_xyz=(1.0, 1.0, 1.0))
    assert (cleaned == 1).sum() == 64 and (cleaned == 2).sum() == 27
    cleaned = remove_islands(labels.copy(), [1, 2], min_volume_mm3=10.0, spacing_xyz=(2.0, 1.0, 1.0))  # 8 voxels = 16 mm3
    assert (cleaned == 1).sum() == 72 and (cleaned == 2).sum() == 27


def test_model_store_import_list_info_and_checksum(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("E2MISEG_MODELS", str(tmp_path / "store"))
    source = make_e2miseg_checkpoint(tmp_path / "incoming.safetensors")
    assert main(["models", "import", str(source)]) == 0
    stored = tmp_path / "store" / "test-model.safetensors"
    assert stored.is_file() and (tmp_path / "store" / "index.json").is_file()
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    row = next(line for line in listing.splitlines() if line.startswith("test-model "))
    assert row.split()[1] == "0.0.1" and "Anterior hippocampus, Posterior hippocampus" in row
    assert row.endswith("CC-BY-SA-4.0 (test)")
    assert main(["models", "info", "test-model", "--build"]) == 0
    info = capsys.readouterr().out
    assert "Anterior hippocampus" in info and "(sha256 verified)" in info
    assert "Parameters: 433,657" in info  # --build instantiated the network from the card
    import e2miseg

    model, card = e2miseg.load_model("test-model", device="cpu")
    assert card["name"] == "test-model" and not model.training
    data = bytearray(stored.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit in the weights
    stored.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its checksum"):
        e2miseg.load_model("test-model", device="cpu")
