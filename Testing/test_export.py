"""Tests of RLRegistrationLib.export: transform files, output checks, flattened fields and Slicer arrays."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from RLRegistrationLib.errors import OutputError
from RLRegistrationLib.io import export, slicer_arrays


def _affine(rotation_matrix, shift=(4.0, -3.0, 2.0)) -> sitk.AffineTransform:
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple((rotation_matrix(4, -3, 6) @ np.diag([1.05, 0.95, 1.02])).ravel()))
    affine.SetCenter((-20.0, 18.0, 60.0))
    affine.SetTranslation(shift)
    return affine


def _displacement_image(grid, seed: int) -> sitk.Image:
    """Smooth random LPS displacement (mm) on ``grid``, sitkVectorFloat64."""
    rng = np.random.default_rng(seed)
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    vectors = np.stack(
        [
            a * np.sin(ii / 3.0 + p) * np.cos(jj / 4.0 - p) + b * np.cos(kk / 2.5)
            for a, b, p in rng.uniform(-2, 2, (3, 3))
        ],
        axis=-1,
    )
    return grid.apply_to(sitk.GetImageFromArray(vectors, isVector=True))


def _composite(oblique_grid, rotation_matrix, seed=0, shift=(4.0, -3.0, 2.0)) -> sitk.CompositeTransform:
    field = sitk.DisplacementFieldTransform(_displacement_image(oblique_grid, seed))
    return sitk.CompositeTransform([_affine(rotation_matrix, shift), field])


def _sample_points(grid, rng, count=40) -> np.ndarray:
    """Points inside the grid (most) and a few outside it, LPS mm."""
    index = rng.uniform(-3, np.asarray(grid.size) + 2, (count, 3))
    return index @ grid.index_to_physical_matrix.T + np.asarray(grid.origin)


def test_write_transform_h5_round_trip(tmp_path, oblique_grid, rotation_matrix, rng):
    transform = _composite(oblique_grid, rotation_matrix)
    path = export.write_transform(transform, tmp_path / "result.h5")
    assert path == tmp_path / "result.h5" and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.h5"]
    back = sitk.ReadTransform(str(path))
    moved = 0.0
    for point in _sample_points(oblique_grid, rng):
        expected = np.asarray(transform.TransformPoint(point.tolist()))
        np.testing.assert_allclose(back.TransformPoint(point.tolist()), expected, atol=1e-6)
        moved = max(moved, float(np.linalg.norm(expected - point)))
    assert moved > 1.0  # the transform is not the identity


def test_write_transform_refuses_existing_file(tmp_path, oblique_grid, rotation_matrix, rng):
    path = tmp_path / "result.h5"
    export.write_transform(_composite(oblique_grid, rotation_matrix, seed=0), path)
    before = path.read_bytes()
    other = _composite(oblique_grid, rotation_matrix, seed=1, shift=(-5.0, 1.0, 0.0))
    with pytest.raises(OutputError, match="exists"):
        export.write_transform(other, path)
    assert path.read_bytes() == before
    export.write_transform(other, path, overwrite=True)
    back = sitk.ReadTransform(str(path))
    for point in _sample_points(oblique_grid, rng, 10):
        np.testing.assert_allclose(
            back.TransformPoint(point.tolist()), other.TransformPoint(point.tolist()), atol=1e-6
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.h5"]


def test_write_transform_refuses_missing_folder_and_bad_suffix(tmp_path, rotation_matrix):
    affine = _affine(rotation_matrix)
    with pytest.raises(OutputError, match="does not exist") as error:
        export.write_transform(affine, tmp_path / "missing" / "result.h5")
    assert str(tmp_path / "missing") in str(error.value)
    with pytest.raises(OutputError, match="must end in .h5, .hdf5, .tfm, .txt$"):
        export.write_transform(affine, tmp_path / "result.nii.gz")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "folder.h5").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        export.write_transform(affine, tmp_path / "folder.h5", overwrite=True)


def test_output_set_refuses_one_file_for_two_outputs(tmp_path):
    from RLRegistrationLib.io.outputs import OutputSet

    with pytest.raises(OutputError, match="the same file is also given to warped"):
        OutputSet(
            {"transform": tmp_path / "a.h5", "warped": tmp_path / "b.nii", "displacement": tmp_path / "b.nii"}
        ).check()
    with pytest.raises(OutputError, match="must end in .json"):
        OutputSet({"transform": tmp_path / "a.h5", "report": tmp_path / "a.nii.gz"}).check()
    OutputSet({"transform": tmp_path / "a.h5", "warped": tmp_path / "b.nii.gz"}).check()  # fine


def test_failed_write_leaves_no_partial_file(tmp_path, oblique_grid, rotation_matrix, monkeypatch):
    image = oblique_grid.reference_image()
    with pytest.raises(OutputError, match="must end in .nii.gz, .nii, .nrrd, .mha"):
        export.write_image(image, tmp_path / "image.unknownformat")
    assert list(tmp_path.iterdir()) == []
    # a writer that dies half-way: the existing file survives and no temporary file is left
    path = tmp_path / "result.h5"
    export.write_transform(_affine(rotation_matrix), path)
    before = path.read_bytes()

    def broken_writer(transform, name):
        with open(name, "wb") as handle:
            handle.write(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteTransform", broken_writer)
    with pytest.raises(OutputError, match="disk full"):
        export.write_transform(_composite(oblique_grid, rotation_matrix), path, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.h5"]


def test_write_image_round_trip(tmp_path, oblique_grid, rng):
    image = oblique_grid.apply_to(sitk.GetImageFromArray(rng.random(oblique_grid.shape).astype(np.float32)))
    path = export.write_image(image, tmp_path / "image.nii.gz")
    back = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    with pytest.raises(OutputError):
        export.write_image(image, path)


def test_total_displacement_equals_transform_minus_identity(oblique_grid, rotation_matrix):
    transform = _composite(oblique_grid, rotation_matrix)
    field = export.total_displacement(transform, oblique_grid)
    assert field.GetPixelID() == sitk.sitkVectorFloat64
    assert field.GetSize() == oblique_grid.size
    np.testing.assert_allclose(field.GetDirection(), oblique_grid.direction, atol=1e-12)
    array = sitk.GetArrayFromImage(field)
    for k, j, i in [(0, 0, 0), (3, 4, 5), (7, 9, 11), (5, 1, 10)]:
        x = np.asarray(field.TransformIndexToPhysicalPoint((i, j, k)))
        np.testing.assert_allclose(
            array[k, j, i], np.asarray(transform.TransformPoint(x.tolist())) - x, atol=1e-9
        )
    # the flattened field is an equivalent transform at the grid points
    flat = sitk.DisplacementFieldTransform(sitk.Image(field))
    x = field.TransformIndexToPhysicalPoint((6, 2, 3))
    np.testing.assert_allclose(flat.TransformPoint(x), transform.TransformPoint(x), atol=1e-9)


def test_slicer_grid_arrays_ras(oblique_grid):
    displacement = _displacement_image(oblique_grid, seed=3)
    arrays = slicer_arrays.slicer_grid_arrays(displacement)
    lps = sitk.GetArrayFromImage(displacement)
    assert arrays.vectors.shape == (*oblique_grid.shape, 3) == (8, 10, 12, 3)
    assert arrays.vectors.dtype == np.float64 and arrays.vectors.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(arrays.vectors[..., 0], -lps[..., 0])
    np.testing.assert_array_equal(arrays.vectors[..., 1], -lps[..., 1])
    np.testing.assert_array_equal(arrays.vectors[..., 2], lps[..., 2])
    np.testing.assert_allclose(arrays.spacing, oblique_grid.spacing)
    # RAS voxel centres: origin + direction @ diag(spacing) @ ijk equals the flipped LPS point
    for i, j, k in [(0, 0, 0), (11, 9, 7), (3, 8, 1)]:
        lps_point = np.asarray(displacement.TransformIndexToPhysicalPoint((i, j, k)))
        ras_point = arrays.origin + arrays.direction @ (np.asarray(arrays.spacing) * [i, j, k])
        np.testing.assert_allclose(ras_point, lps_point * [-1, -1, 1], atol=1e-9)
    assert np.linalg.det(arrays.direction) == pytest.approx(np.linalg.det(oblique_grid.direction_matrix))


def test_slicer_volume_arrays(oblique_grid, rng):
    image = oblique_grid.apply_to(sitk.GetImageFromArray(rng.random(oblique_grid.shape)))
    matrix, array = slicer_arrays.slicer_volume_arrays(image)
    assert array.shape == oblique_grid.shape
    lps = np.asarray(image.TransformIndexToPhysicalPoint((2, 3, 4)))
    np.testing.assert_allclose((matrix @ [2, 3, 4, 1])[:3], lps * [-1, -1, 1], atol=1e-9)


# ----------------------------------------------------------------------------------------------------------
# OutputSet: staging folders, suffixes in other letters, signals during the writes and the renames


def _json_writer(text):
    return lambda path: path.write_text(text)


def test_outputs_with_upper_case_suffixes_are_written_and_no_staging_folder_is_left(tmp_path):
    from RLRegistrationLib.io.outputs import OutputSet

    image = sitk.GetImageFromArray(np.ones((4, 5, 6), np.float32))
    outputs = OutputSet({"transform": tmp_path / "T.H5", "warped": tmp_path / "W.MHA"})
    outputs.check()
    written = outputs.write(
        {
            "transform": lambda path: sitk.WriteTransform(sitk.TranslationTransform(3), str(path)),
            "warped": lambda path: sitk.WriteImage(image, str(path)),
        }
    )
    assert written == outputs.written == [tmp_path / "T.H5", tmp_path / "W.MHA"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["T.H5", "W.MHA"]


def test_mat_is_not_offered_for_a_transform_that_holds_a_field(tmp_path):
    from RLRegistrationLib.io.outputs import OutputSet

    with pytest.raises(OutputError, match=r"must end in .h5, .hdf5, .tfm, .txt$"):
        OutputSet({"transform": tmp_path / "t.mat"}).check()


def test_a_dangling_link_counts_as_an_existing_output(tmp_path):
    from RLRegistrationLib.io.outputs import OutputSet

    (tmp_path / "t.h5").symlink_to(tmp_path / "gone.h5")
    with pytest.raises(OutputError, match="file exists"):
        OutputSet({"transform": tmp_path / "t.h5"}).check()


def test_a_signal_during_the_renames_is_raised_once_every_output_is_in_place(tmp_path, monkeypatch):
    """SIGINT arrives while the first output is renamed into place: it is held, then raised, and by then
    every output is the new one (``written`` says so) and no backup is left."""
    import os
    import signal

    from RLRegistrationLib.io import outputs as module

    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text("old")
    replace = os.replace
    sent = []

    def replace_and_interrupt(a, b):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        replace(a, b)

    monkeypatch.setattr(module.os, "replace", replace_and_interrupt)
    outputs = module.OutputSet({"report": tmp_path / "a.json", "config": tmp_path / "b.json"}, overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        outputs.write({"report": _json_writer("new a"), "config": _json_writer("new b")})
    assert outputs.written == [tmp_path / "a.json", tmp_path / "b.json"]
    assert (tmp_path / "a.json").read_text() == "new a" and (tmp_path / "b.json").read_text() == "new b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_a_signal_during_a_write_answers_at_once_and_leaves_the_old_outputs(tmp_path, monkeypatch):
    """The writer is still busy (it would take 2 s): the signal ends the wait at once, the staging folder
    goes, the old output stays as it was, and the writer, when it comes back, finds no folder."""
    import os
    import signal
    import threading
    import time

    from RLRegistrationLib.io import outputs as module

    monkeypatch.setattr(module, "silence_native_stderr_from_now_on", lambda: None)
    (tmp_path / "a.json").write_text("old")
    finished = threading.Event()

    def slow(path):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(2.0)
        try:
            path.write_text("new")
        finally:
            finished.set()

    outputs = module.OutputSet({"report": tmp_path / "a.json"}, overwrite=True)
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        outputs.write({"report": slow})
    assert time.perf_counter() - start < 1.0
    assert outputs.written == []
    finished.wait(5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert (tmp_path / "a.json").read_text() == "old"


def test_remove_leftovers_of_writers_killed_outright(tmp_path):
    import os
    import subprocess
    import sys

    from RLRegistrationLib.io.outputs import remove_leftovers

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    (tmp_path / f".outputs.rlreg-{pid}-partial-x1").mkdir()
    (tmp_path / f".outputs.rlreg-{pid}-partial-x1" / "t.h5").write_text("half")
    (tmp_path / f".t.h5.rlreg-{pid}-previous").write_text("old")
    (tmp_path / f".outputs.rlreg-{os.getpid()}-partial-mine").mkdir()  # a running process's: kept
    (tmp_path / "t.h5").write_text("kept")
    removed = remove_leftovers(tmp_path)
    assert len(removed) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".outputs.rlreg-{os.getpid()}-partial-mine",
        "t.h5",
    ]
