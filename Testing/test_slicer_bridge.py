"""Slicer-side helpers that run without Slicer (RLRegistrationLib.slicer_bridge): geometry between Slicer's
RAS matrices/arrays and SimpleITK, the initial transform from parent transforms, the worker thread, the
panel's choices. Tiny volumes (<= 32^3 working grid), fast fake policies."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from grid_lookup import transform_points_ras

from RLRegistrationLib.devices import device_choices
from RLRegistrationLib.errors import InputError
from RLRegistrationLib.fields.geometry import Grid
from RLRegistrationLib.frontends.display import format_range, match_segment_names
from RLRegistrationLib.io.slicer_arrays import (
    grid_geometry_matches,
    image_from_slicer_arrays,
    initial_transform_from_parents,
    labels_on_image_grid,
    ras_matrix_to_lps,
    slicer_volume_arrays,
)
from RLRegistrationLib.policies.base import Policy, PolicyStep
from RLRegistrationLib.policies.cards import chain_settings, read_card
from RLRegistrationLib.policies.choices import policy_choices
from RLRegistrationLib.policies.registry import policy_default_steps
from RLRegistrationLib.registration.session import RegistrationSession, SessionOptions
from RLRegistrationLib.registration.worker import RegistrationWorker, step_frame

FLIP = np.array([-1.0, -1.0, 1.0])


def rigid_ras(rotation: np.ndarray, translation) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = translation
    return m


def to_ras(points_lps: np.ndarray) -> np.ndarray:
    return np.asarray(points_lps) * FLIP


def apply4(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points) @ matrix[:3, :3].T + matrix[:3, 3]


# ---------------------------------------------------------------------------------------------- geometry


def test_image_from_slicer_arrays_inverts_slicer_volume_arrays(oblique_grid, image_on_grid, rng):
    array = rng.normal(size=oblique_grid.shape).astype(np.float32)
    image = image_on_grid(array, oblique_grid)
    ijk_to_ras, voxels = slicer_volume_arrays(image)
    back = image_from_slicer_arrays(voxels, ijk_to_ras)
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-12)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-12)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), array)
    with pytest.raises(InputError, match="3D scalar"):
        image_from_slicer_arrays(np.zeros((2, 3)), ijk_to_ras)
    bad = ijk_to_ras.copy()
    bad[:3, 1] = 0
    with pytest.raises(InputError, match="zero or invalid axis"):
        image_from_slicer_arrays(voxels, bad)


def test_ras_matrix_to_lps_conjugates_points(rotation_matrix):
    m_ras = rigid_ras(rotation_matrix(10, 20, -30), [5.0, -7.0, 2.0])
    m_lps = ras_matrix_to_lps(m_ras)
    points_lps = np.array([[1.0, 2.0, 3.0], [-4.0, 0.5, 9.0]])
    np.testing.assert_allclose(
        to_ras(apply4(m_lps, points_lps)), apply4(m_ras, to_ras(points_lps)), atol=1e-12
    )
    with pytest.raises(InputError):
        ras_matrix_to_lps(np.eye(3))


def test_initial_transform_reproduces_what_slicer_shows(rotation_matrix):
    """Moving under a parent transform G_m (to world), fixed under G_f: the fixed local point x is shown at
    world G_f x, where the moving voxel at local G_m^-1 G_f x is displayed. The initial transform (LPS,
    fixed -> moving) must give exactly that point."""
    g_m = rigid_ras(rotation_matrix(5, -8, 12), [10.0, -4.0, 6.0])
    g_f = rigid_ras(rotation_matrix(0, 3, 0), [1.0, 2.0, -3.0])
    points_lps = np.array([[0.0, 0.0, 0.0], [12.0, -30.0, 44.0], [-5.5, 7.25, 3.0]])
    for fixed_to_world in (None, g_f):
        transform = initial_transform_from_parents(g_m, fixed_to_world)
        shown_world = apply4(np.eye(4) if fixed_to_world is None else fixed_to_world, to_ras(points_lps))
        for x, world in zip(points_lps, shown_world):
            moving_local_ras = to_ras(np.asarray(transform.TransformPoint(tuple(x))))
            # the moving local point is displayed at G_m * local: the same world point
            np.testing.assert_allclose(apply4(g_m, moving_local_ras[None])[0], world, atol=1e-9)
    # "from parent" matrices are the inverse of "to parent"
    from_parent = np.linalg.inv(g_m)
    t2 = initial_transform_from_parents(np.linalg.inv(from_parent))
    np.testing.assert_allclose(t2.GetMatrix(), initial_transform_from_parents(g_m).GetMatrix(), atol=1e-12)
    assert initial_transform_from_parents(None, None) is None
    assert initial_transform_from_parents(np.eye(4), np.eye(4)) is None
    with pytest.raises(InputError, match="not an invertible"):
        initial_transform_from_parents(np.zeros((4, 4)))


def make_pair(blob_array, make_grid, shift_mm=(3.0, -2.0, 1.5)):
    """Fixed and moving blob images (20^3, 2 mm) on an oblique-free grid; the moving content is shifted."""
    grid = make_grid((20, 20, 20), (2.0, 2.0, 2.0), (-19.0, -19.0, -19.0))
    fixed = grid.apply_to(sitk.GetImageFromArray(blob_array(grid.shape, seed=3)))
    shift = sitk.TranslationTransform(3, tuple(-s for s in shift_mm))
    moving = sitk.Resample(fixed, fixed, shift, sitk.sitkLinear, 0.0)  # content moved by +shift
    return fixed, moving


def test_parent_transform_initialization_is_kept_in_the_result(blob_array, make_grid):
    """The user aligned the moving volume with a parent (linear) transform: the session started from it
    and the exported result still contains it (never dropped)."""
    fixed, moving_content = make_pair(blob_array, make_grid, shift_mm=(0.0, 0.0, 0.0))
    # the moving image lives in its own frame: its voxels moved by a rigid map; the user's parent
    # transform (to world) puts it back where it overlaps the fixed image
    rot = np.array([[0.98, -0.199, 0.0], [0.199, 0.98, 0.0], [0.0, 0.0, 1.0]])
    rot, _ = np.linalg.qr(rot)
    rot *= np.sign(np.diag(rot))
    g_m = rigid_ras(rot, [6.0, -4.0, 2.0])  # to world, RAS
    m_lps = ras_matrix_to_lps(np.linalg.inv(g_m))  # world -> moving local, LPS
    local = Grid.from_image(moving_content)
    moving = sitk.Resample(
        moving_content, moving_content, _affine(np.linalg.inv(m_lps)), sitk.sitkLinear, 0.0
    )
    local.apply_to(moving)

    initial = initial_transform_from_parents(g_m)
    inner = (slice(4, 16),) * 3

    def mean_error(transform):
        realigned = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0)
        diff = sitk.GetArrayViewFromImage(realigned)[inner] - sitk.GetArrayViewFromImage(fixed)[inner]
        return float(np.abs(diff).mean())

    # values ~1.15 on average: ~1 % is the double linear interpolation of a rotated image
    assert mean_error(initial) < 0.03
    assert mean_error(initial.GetInverse()) > 10 * mean_error(initial)  # the other direction is wrong
    assert mean_error(sitk.Transform()) > 10 * mean_error(initial)  # dropping it is wrong too

    session = RegistrationSession(
        fixed,
        moving,
        ZeroPolicy(),
        SessionOptions(working_spacing_mm=4.0, initialization="none"),
        initial_transform=initial,
    )
    session.prepare()
    list(session.run(1))
    result = session.result()
    x = (1.0, -2.0, 3.0)
    np.testing.assert_allclose(result.transform.TransformPoint(x), initial.TransformPoint(x), atol=1e-6)


def _affine(matrix4: np.ndarray) -> sitk.AffineTransform:
    t = sitk.AffineTransform(3)
    t.SetMatrix(tuple(matrix4[:3, :3].ravel()))
    t.SetTranslation(tuple(matrix4[:3, 3]))
    return t


def test_labels_on_image_grid_and_segment_names(make_grid):
    grid = make_grid((6, 5, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    image = grid.apply_to(sitk.GetImageFromArray(np.ones(grid.shape, np.float32)))
    labels = sitk.GetImageFromArray(np.arange(np.prod(grid.shape), dtype=np.uint8).reshape(grid.shape) % 3)
    grid.apply_to(labels)
    labels.SetOrigin((1e-6, 0.0, 0.0))  # rounding noise from a RAS round trip: kept as is
    same = labels_on_image_grid(labels, image)
    assert same.GetOrigin() == image.GetOrigin()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(same), sitk.GetArrayViewFromImage(labels))
    coarse = sitk.Resample(
        labels, [3, 3, 2], sitk.Transform(), sitk.sitkNearestNeighbor, (0, 0, 0), (2, 2, 2)
    )
    resampled = labels_on_image_grid(coarse, image)
    assert resampled.GetSize() == image.GetSize()
    assert set(np.unique(sitk.GetArrayViewFromImage(resampled))) <= {0, 1, 2}

    assert match_segment_names(["liver", "spleen", "kidney", "liver"], ["kidney", "liver", "aorta"]) == [
        "liver",
        "kidney",
    ]
    assert match_segment_names(["a"], ["b"]) == []


def test_grid_geometry_matches(oblique_grid):
    from RLRegistrationLib.io.slicer_arrays import slicer_grid_arrays

    field = oblique_grid.apply_to(sitk.GetImageFromArray(np.zeros((*oblique_grid.shape, 3)), isVector=True))
    arrays = slicer_grid_arrays(field)
    dims = oblique_grid.size
    assert grid_geometry_matches(dims, arrays.origin, arrays.spacing, arrays.direction, arrays)
    assert not grid_geometry_matches(
        (dims[0] + 1, dims[1], dims[2]), arrays.origin, arrays.spacing, arrays.direction, arrays
    )
    assert not grid_geometry_matches(dims, arrays.origin + 1, arrays.spacing, arrays.direction, arrays)
    assert not grid_geometry_matches(dims, arrays.origin, arrays.spacing, None, arrays)


# ---------------------------------------------------------------------------------------------- worker


class ZeroPolicy(Policy):
    """Proposes no motion (tests only the plumbing)."""

    name = "zero"

    def propose(self, state):
        return PolicyStep(step_field=torch.zeros_like(state.field))


class ShiftPolicy(Policy):
    """Proposes a constant step of 0.25 working voxels along i, with a constant weight map; can sleep/fail."""

    name = "shift"

    def __init__(self, delay: float = 0.0, fail_at: int | None = None, error: Exception | None = None):
        self.delay, self.fail_at, self.error = delay, fail_at, error
        self.started = threading.Event()

    def propose(self, state):
        self.started.set()
        if self.fail_at is not None and state.step_index >= self.fail_at:
            raise self.error
        time.sleep(self.delay)
        step = torch.zeros_like(state.field)
        step[:, 0] = 0.25
        weight = torch.full((1, 1, *state.field.shape[2:]), 0.5)
        return PolicyStep(step_field=step, weight_map=weight, diagnostics={"loss": 1.0})


def make_session(blob_array, make_grid, policy) -> RegistrationSession:
    fixed, moving = make_pair(blob_array, make_grid)
    return RegistrationSession(
        fixed, moving, policy, SessionOptions(working_spacing_mm=4.0, initialization="none")
    )


def drain(worker: RegistrationWorker, timeout: float = 60.0) -> list:
    assert worker.join(timeout), "worker did not finish"
    return worker.poll()


def test_worker_posts_prepared_steps_final_finished(blob_array, make_grid):
    session = make_session(blob_array, make_grid, ShiftPolicy())
    worker = RegistrationWorker(session, 2, moving=session.moving, frame_dtype=np.float64).start()
    messages = drain(worker)
    assert [m.kind for m in messages] == ["prepared", "step", "step", "final", "finished"]
    assert [m.report.index for m in messages[:3]] == [0, 1, 2]
    assert messages[-1].steps_done == 2 and not messages[-1].cancelled

    frame = messages[2].frame
    grid = session.grid
    assert frame.index == 2 and frame.warped.shape == grid.shape and frame.magnitude.shape == grid.shape
    assert frame.field.vectors.shape == (*grid.shape, 3)
    np.testing.assert_allclose(frame.weight_map, 0.5)
    lo, hi = worker.moving_window
    assert lo - 1e-5 <= frame.warped.min() and frame.warped.max() <= hi + 1e-5
    # step 2 of 0.25 voxels along i (composed), spacing 4 mm: |u| = 2 mm inside
    assert np.median(frame.magnitude) == pytest.approx(2.0, abs=1e-3)
    # the frame's field is the deformation, its affine the pre-alignment: A(x + u(x)) is the transform, RAS
    result = session.result(2)
    points_lps = np.array([[0.0, 0.0, 0.0], [3.0, -5.0, 2.0]])
    expected = np.array([result.transform.TransformPoint(tuple(p)) for p in points_lps]) * FLIP

    def through(frame_or_final, points_ras):
        moved = transform_points_ras(points_ras, frame_or_final.field)
        return moved @ frame_or_final.affine_ras[:3, :3].T + frame_or_final.affine_ras[:3, 3]

    np.testing.assert_allclose(through(frame, points_lps * FLIP), expected, atol=1e-4)

    final = messages[3].final
    fixed_grid = Grid.from_image(session.fixed)
    assert final.index == 2 and final.field.vectors.shape == (*fixed_grid.shape, 3)
    assert final.warped.shape == fixed_grid.shape and final.weight_map.shape == grid.shape
    np.testing.assert_allclose(through(final, points_lps * FLIP), expected, atol=1e-3)
    assert format_range(final.weight_map) == "0.5 – 0.5"


class SpreadPolicy(ShiftPolicy):
    """ShiftPolicy that also reports an uncertainty map (1 mm + 0.5 mm per step), like a sampling policy."""

    supports_sampling = True

    def propose(self, state):
        proposal = super().propose(state)
        shape = state.field.shape[2:]
        proposal.uncertainty_map = torch.full((1, 1, *shape), 1.0 + 0.5 * state.step_index)
        proposal.uncertainty_map[..., 0] = 0.0  # not constant (a border slab outside the fixed grid)
        return proposal


def test_worker_posts_the_uncertainty_per_step(blob_array, make_grid):
    session = make_session(blob_array, make_grid, SpreadPolicy())
    messages = drain(RegistrationWorker(session, 2, moving=session.moving).start())
    assert [m.kind for m in messages] == ["prepared", "step", "step", "final", "finished"]
    assert messages[0].frame.uncertainty is None and messages[0].report.uncertainty_mean_mm is None
    for message, level in zip(messages[1:3], (1.0, 1.5)):
        frame = message.frame
        assert frame.uncertainty.shape == session.grid.shape and frame.uncertainty.dtype == np.float32
        assert float(frame.uncertainty.max()) == pytest.approx(level)
        assert message.report.uncertainty_max_mm == pytest.approx(level)
    final = messages[3].final
    assert final.uncertainty.shape == tuple(reversed(session.fixed.GetSize()))  # output grid = fixed grid
    assert float(final.uncertainty.max()) == pytest.approx(1.5) and float(final.uncertainty.min()) >= 0
    assert final.result.uncertainty_map.GetSize() == session.fixed.GetSize()
    assert format_range(messages[2].frame.uncertainty) == "0 – 1.5"
    # replay of an earlier step shows that step's map
    assert float(step_frame(session, 1).uncertainty.max()) == pytest.approx(1.0)


def test_worker_cancel_stops_within_one_step_and_continue(blob_array, make_grid):
    policy = ShiftPolicy(delay=0.2)
    session = make_session(blob_array, make_grid, policy)
    worker = RegistrationWorker(session, 50, frames=False).start()
    assert policy.started.wait(30)
    worker.cancel()
    messages = drain(worker)
    kinds = [m.kind for m in messages]
    assert kinds[-1] == "finished" and messages[-1].cancelled and "final" not in kinds
    assert session.step_count <= 2  # the step in progress completes, nothing more
    done = session.step_count

    # continue from the current state: no preparation again, indices go on
    more = RegistrationWorker(session, 2, frames=False, finalize=False).start()
    messages = drain(more)
    assert [m.kind for m in messages] == ["step", "step", "finished"]
    assert [m.report.index for m in messages[:2]] == [done + 1, done + 2]
    # step back, then replay any step on the working grid
    assert session.step_back() == done + 1
    frame = step_frame(session, 1)
    assert frame.index == 1 and frame.field.vectors.dtype == np.float32


def test_worker_cancel_before_first_step(blob_array, make_grid):
    session = make_session(blob_array, make_grid, ShiftPolicy())
    worker = RegistrationWorker(session, 5, frames=False)
    worker.cancel()
    worker.start()
    messages = drain(worker)
    assert [m.kind for m in messages] == ["prepared", "finished"]
    assert messages[-1].cancelled and messages[-1].steps_done == 0


def test_worker_reports_errors_and_out_of_memory(blob_array, make_grid):
    session = make_session(
        blob_array, make_grid, ShiftPolicy(fail_at=1, error=ValueError("bad field\nat step 1"))
    )
    messages = drain(RegistrationWorker(session, 3, frames=False).start())
    assert [m.kind for m in messages] == ["prepared", "step", "error"]
    assert messages[-1].error == "ValueError: at step 1" and not messages[-1].out_of_memory
    assert "Traceback" in messages[-1].details and messages[-1].steps_done == 1

    oom = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    session = make_session(blob_array, make_grid, ShiftPolicy(fail_at=0, error=oom))
    messages = drain(RegistrationWorker(session, 3, frames=False).start())
    assert messages[-1].kind == "error" and messages[-1].out_of_memory


# ---------------------------------------------------------------------------------------------- choices


def _card(folder: Path, **changes) -> Path:
    """A model folder holding a copy of the shipped SPAC card with ``changes``, offered alone too (no
    weights: a card is read when registered, the weights only when a policy is made)."""
    card = json.loads(
        (Path(__file__).resolve().parents[1] / "models" / "spac-brain-synth" / "card.json").read_text()
    )
    card["inference"] = {**card["inference"], "offered_alone": True}
    card.update(changes)
    folder.mkdir()
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def test_policy_choices_come_from_the_registry_and_its_cards(tmp_path, fresh_registry):
    found = fresh_registry.discover_models(tmp_path)  # an empty folder: tto alone
    assert found == {} and [c.name for c in policy_choices()] == ["tto"]
    _card(tmp_path / "spac-brain", id="spac-brain", description="SPAC on brain MR", modality=["T1 MR"])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "card.json").write_text("{not json")
    with pytest.warns(UserWarning, match="skipping model"):
        found = fresh_registry.discover_models(tmp_path)
    assert list(found) == ["spac-brain"]
    choices = {c.name: c for c in policy_choices()}
    assert list(choices) == ["tto", "spac-brain", "spac-brain+tto"]
    spac, chain = choices["spac-brain"], choices["spac-brain+tto"]
    assert (
        spac.description == "SPAC on brain MR" and spac.modality == "T1 MR" and spac.card.name == "card.json"
    )
    assert chain.modality == "T1 MR"  # a chain says what its learned steps were trained for
    assert "any" in choices["tto"].modality and choices["tto"].label.startswith("tto — ")
    assert not any(c.supports_sampling for c in choices.values())
    morphseek = json.loads(
        (Path(__file__).resolve().parents[1] / "recipes" / "morphseek-brain-synth" / "card.json").read_text()
    )
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "card.json").write_text(json.dumps({**morphseek, "id": "morphseek-brain"}))
    fresh_registry.register_model(folder)
    sampling = {c.name: c.supports_sampling for c in policy_choices()}
    assert sampling["morphseek-brain"] and sampling["morphseek-brain+tto"] and not sampling["tto"]


def test_policy_choices_carry_the_default_steps():
    choices = {c.name: c for c in policy_choices()}
    assert choices["tto"].default_steps == policy_default_steps("tto") == 6
    assert choices["tto"].option_defaults == {"iterations": 5, "regularization": 2.0}
    for name, choice in choices.items():
        assert choice.default_steps == policy_default_steps(name)
    if "spac-brain-synth+tto" in choices:  # the shipped model's card sets its chain
        chain = chain_settings(read_card(Path(__file__).resolve().parents[1] / "models" / "spac-brain-synth"))
        assert choices["spac-brain-synth+tto"].default_steps == chain.total_steps
        regularization = chain.tto.get("regularization", 2.0)
        assert choices["spac-brain-synth+tto"].option_defaults["regularization"] == regularization


def test_device_choices_name_the_device():
    choices = device_choices()
    assert [c[0] for c in choices] == ["auto", "cuda", "cpu"]
    assert choices[2][2] and "cpu" in choices[2][1].lower()
    if not torch.cuda.is_available():
        assert not choices[1][2] and "not available" in choices[1][1]
    else:
        assert choices[1][2] and "cuda:0" in choices[1][1]
