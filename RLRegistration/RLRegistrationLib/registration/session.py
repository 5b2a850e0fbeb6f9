"""A registration as a sequence of steps that can be watched, cancelled, continued and stepped back.

Flow: linear pre-alignment (fixed -> moving; rigid, affine or none: ``prealign``, its finest level the
working grid's spacing) -> working grid
(isotropic, dims divisible by 16) -> the policy proposes step fields that are composed into the total field
``phi_t`` (working-grid voxels) -> the result is ``T(x) = A(x + u(x))`` with ``u`` = ``phi_T`` resampled to
the output grid in LPS mm (docs/ARCHITECTURE.md §3).

Nothing here knows about files, threads or Slicer; ``cancel()`` is safe to call from another thread.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator

import numpy as np
import SimpleITK as sitk
import torch

from ..devices import resolve_device
from ..errors import InputError
from ..fields.geometry import (
    Grid,
    affine_to_matrix,
    field_grid,
    field_tensor_to_image,
    flatten_linear,
    image_to_tensor,
    images_resolution,
    padded_grid,
    physical_points,
    tensor_to_image,
    voxel_to_physical,
)
from ..fields.metrics import common_labels, dice_per_label
from ..fields.similarity import LocalNCC
from ..fields.spatial import compose_displacements, resample_field_to_grid, sample_image_at_points, warp
from ..io.imaging import (
    AntialiasedCopies,
    check_overlap,
    check_pyramid_size,
    check_same_geometry,
    intensity_window,
    normalize_intensity,
    resample_to_grid,
)
from ..io.masks import conform_mask, mask_to_grid
from ..io.transform_files import QUANTUM_MM
from ..policies.base import Policy, PolicyState, similarity_weight
from .harm_check import HarmCheck, Verdict
from .memory import check_memory, estimate_peak_memory
from .prealign import INITIALIZATIONS, PrealignSchedule, prealign
from .region import cropped_working_grid, registration_region
from .result import RegistrationResult
from .session_options import InputNames, SessionOptions
from .stages import StageDecisions, decide_linear, decide_pair
from .step_report import StepReport

# the step reports' similarity is averaged over at most this many voxels (a 1 mm grid: every 2nd per axis)
REPORT_MAX_VOXELS = 112 * 112 * 112


class RegistrationSession:
    """Step-wise registration of ``moving`` to ``fixed`` with ``policy``.

    ``run(n)`` yields a ``StepReport`` per step; call it again to continue. ``step_back()`` undoes the last
    step, ``cancel()`` (from any thread) stops ``run`` after the step in progress, ``result()`` gives the
    transform. ``initial_transform`` (fixed -> moving, linear) initializes or replaces the affine stage.
    ``names`` ("fixed image 'f.nii.gz'", ...) start the messages of ``InputError``: an image too small for
    the pyramid, over the memory cap (here), or images that do not overlap (``prepare``).
    """

    def __init__(
        self,
        fixed: sitk.Image,
        moving: sitk.Image,
        policy: Policy,
        options: SessionOptions | None = None,
        fixed_labels: sitk.Image | None = None,
        moving_labels: sitk.Image | None = None,
        initial_transform: sitk.Transform | None = None,
        fixed_mask: sitk.Image | None = None,
        moving_mask: sitk.Image | None = None,
        names: InputNames | None = None,
        policies: dict[str, Policy] | None = None,
        copies: AntialiasedCopies | None = None,
    ):
        self.options = options or SessionOptions()
        # the policy for a pair kind found after the pre-alignment (``policy`` for any other)
        self.policies = dict(policies or {})
        self.names = names = names or InputNames()
        check_pyramid_size(fixed, names.fixed)
        check_pyramid_size(moving, names.moving)
        if self.options.initialization not in INITIALIZATIONS:
            raise InputError(
                f"initialization '{self.options.initialization}': choose from {', '.join(INITIALIZATIONS)}"
            )
        # label maps, nonzero = inside, restricting the similarity (pre-alignment metric and policy loss)
        self.fixed_mask = None if fixed_mask is None else conform_mask(fixed_mask, fixed, names.fixed_mask)
        self.moving_mask = (
            None if moving_mask is None else conform_mask(moving_mask, moving, names.moving_mask)
        )
        if (fixed_labels is None) != (moving_labels is None):
            raise InputError("labels: give both fixed and moving label maps, or neither")
        if fixed_labels is not None:
            check_same_geometry(fixed, fixed_labels, names.fixed_labels)
            check_same_geometry(moving, moving_labels, names.moving_labels)
        self.fixed, self.moving = fixed, moving
        self.fixed_labels, self.moving_labels = fixed_labels, moving_labels
        if self.options.max_memory_gib is not None:
            check_memory(
                estimate_peak_memory(
                    fixed,
                    moving,
                    self.options,
                    labels=fixed_labels is not None,
                    steps=self.options.planned_steps,
                ),
                self.options.max_memory_gib,
                names.fixed,
            )
        self.policy = policy
        self.initial_transform = initial_transform
        self.device = resolve_device(self.options.device)
        self._cancel = threading.Event()
        self._prepared = False
        self.fields: list[torch.Tensor] = []  # total field after each step, working-grid voxels, CPU
        self.weight_maps: list[torch.Tensor | None] = []
        self.uncertainty_maps: list[torch.Tensor | None] = []  # mm, working grid, CPU
        self.reports: list[StepReport] = []
        self.cancelled = False
        self._similarity = LocalNCC(window=9)
        # do no harm and the pair's kind, decided in ``prepare`` (``stages``)
        self.decisions = StageDecisions()
        self._harm_checker: HarmCheck | None = None
        # smoothed copies of ``fixed`` and ``moving``, some perhaps being made already (``build_session``):
        # ``prepare`` uses them, then drops them
        self._copies = copies
        # (total field, moving image warped by it) of the last report: the next step's input
        self._last_warped: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)

    # ----------------------------------------------------------------- preparation
    @property
    def initialization(self) -> str:
        """The pre-alignment this session runs: "affine", "rigid" or "none" (``SessionOptions``)."""
        return self.options.initialization

    def prepare(self) -> StepReport:
        """Pre-alignment, working grid and tensors; returns the report of step 0 (idempotent)."""
        if self._prepared:
            return self.reports[0]
        start = time.perf_counter()
        torch.manual_seed(self.options.seed)
        opts = self.options
        if self._copies is None:  # smoothed images shared by the stages of the preparation
            self._copies = AntialiasedCopies()
        try:
            linear = prealign(
                self.fixed,
                self.moving,
                self.initialization,
                self.initial_transform,
                self.fixed_mask,
                self.moving_mask,
                seed=opts.seed,
                schedule=PrealignSchedule(finest_mm=max(PrealignSchedule.finest_mm, opts.working_spacing_mm)),
                copies=self._copies,
            )
        except RuntimeError as error:  # ITK's registration gives up (e.g. no sample inside the moving)
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise InputError(
                f"{self.names.moving}: the {self.initialization} pre-alignment failed ({reason})"
            ) from None
        self.decisions = StageDecisions()
        linear = decide_linear(
            self.harm_checker if opts.harm_check else None,
            self.initial_transform,
            linear,
            self.initialization,
            self.decisions,
        )
        self.affine = flatten_linear(linear)
        decide_pair(
            self.harm_checker,
            self.affine,
            opts.pair,
            opts.pair_reason,
            opts.steps_asked,
            (self.fixed, self.moving),
            self.decisions,
        )
        self.policy = self.policies.get(self.decisions.pair.kind, self.policy)
        if self.initialization != "none":
            stage = "affine"
        else:
            stage = "initial" if self.initial_transform else "none"
        check_overlap(self.fixed, self.moving, self.affine, stage, (self.names.fixed, self.names.moving))
        self.fixed_grid = Grid.from_image(self.fixed)
        region = None
        if opts.crop_to_region:
            region = registration_region(
                self.fixed, self.moving, self.affine, self.fixed_mask, self.moving_mask
            )
        lattice, self.grid = cropped_working_grid(
            self.fixed_grid, opts.working_spacing_mm, region, max_voxels=opts.max_working_voxels
        )
        # on the whole lattice, the field outside the cropped grid repeats its border (as sampling clamps)
        self.output_grid = field_grid(self.fixed_grid, lattice, opts.output_grid)
        self.image_grid = self.grid if opts.output_grid == "working" else self.fixed_grid
        fixed_w = resample_to_grid(self.fixed, self.grid, copies=self._copies)
        moving_w = resample_to_grid(self.moving, self.grid, self.affine, copies=self._copies)
        self._copies = None  # the full-resolution smoothed copies are not needed after this
        self.fixed_tensor = self._normalized_tensor(fixed_w, intensity_window(self.fixed))
        self.moving_tensor = self._normalized_tensor(moving_w, intensity_window(self.moving))
        self.fixed_mask_tensor = self._mask_tensor(self.fixed_mask, None)
        self.moving_mask_tensor = self._mask_tensor(self.moving_mask, self.affine)
        self._prepare_labels()
        self.policy.reset(self.fixed_tensor, self.moving_tensor, spacing_mm=self.grid.spacing[0])
        self.resolution_mm = images_resolution(self.fixed, self.moving)
        identity = torch.zeros((1, 3, *self.grid.shape))
        self.fields = [identity]
        self.weight_maps = [None]
        self.uncertainty_maps = [None]
        self._start_time = time.perf_counter()
        self.reports = [self._report(0, identity, time.perf_counter() - start, {})]
        self._prepared = True
        return self.reports[0]

    @property
    def harm_checker(self) -> HarmCheck:
        """The do-no-harm measure of this pair (``harm_check``), made on first use."""
        if getattr(self, "_harm_checker", None) is None:
            self._harm_checker = HarmCheck(self.fixed, self.moving, self.fixed_mask, copies=self._copies)
        return self._harm_checker

    def harm_verdict(self, step: int | None = None) -> Verdict | None:
        """Whether the deformable steps up to ``step`` (default: the last) align the images better than the
        pre-alignment on the do-no-harm measure; None before any step or with ``harm_check`` off."""
        index = self.step_count if step is None else int(step)
        if not self.options.harm_check or index == 0:
            return None
        with torch.no_grad():
            grid = padded_grid(self.grid)
            u_mm = resample_field_to_grid(self.field_at(index).to(self.device), self.grid, grid)
        candidate = sitk.CompositeTransform(3)
        candidate.AddTransform(self.affine)
        candidate.AddTransform(sitk.DisplacementFieldTransform(field_tensor_to_image(u_mm, grid)))  # owns it
        return self.harm_checker.compare(self.affine, candidate, "deformable refinement", "pre-alignment")

    def final_result(self) -> tuple[RegistrationResult, list[Verdict]]:
        """The result a run ends with and the do-no-harm verdicts behind it: the last step's, or the
        pre-alignment's when the deformable steps did not improve on it (``harm_verdict``)."""
        verdict = self.harm_verdict()
        verdicts = [*self.decisions.verdicts, *([verdict] if verdict is not None else [])]
        result = self.result(0 if verdict is not None and not verdict.accepted else None)
        result.verdicts, result.steps_run = verdicts, list(self.reports)
        return result, verdicts

    def _normalized_tensor(self, image: sitk.Image, window: tuple[float, float]) -> torch.Tensor:
        array = normalize_intensity(sitk.GetArrayViewFromImage(image), window)
        return torch.from_numpy(array)[None, None].to(self.device)

    def _mask_tensor(self, mask: sitk.Image | None, transform: sitk.Transform | None) -> torch.Tensor | None:
        """A mask on the working grid (through ``transform``, working point -> mask point), (1, 1, D, H, W)
        in [0, 1]; None without a mask. ``InputError`` when nothing of it lands on the working grid."""
        if mask is None:
            return None
        array = sitk.GetArrayFromImage(mask_to_grid(mask, self.grid, transform))
        if not np.any(array > 0.5):
            name = self.names.fixed_mask if mask is self.fixed_mask else self.names.moving_mask
            raise InputError(f"{name}: no voxel of it falls inside the registered field of view")
        return torch.from_numpy(array)[None, None].to(self.device)

    def _prepare_labels(self) -> None:
        self._label_points = None
        if self.fixed_labels is None:
            return
        fixed_labels = sitk.GetArrayFromImage(self.fixed_labels)
        moving_labels = sitk.GetArrayViewFromImage(self.moving_labels)
        if self.image_grid is not self.fixed_grid:
            fixed_labels = sitk.GetArrayFromImage(
                resample_to_grid(self.fixed_labels, self.image_grid, interpolator=sitk.sitkNearestNeighbor)
            )
        self._dice_labels = common_labels(fixed_labels, moving_labels, self.options.dice_labels)
        self._fixed_label_array = fixed_labels
        self._moving_label_tensor = image_to_tensor(self.moving_labels, self.device)
        self._moving_label_grid = Grid.from_image(self.moving_labels)
        # image-grid points mapped through the affine once; each step adds A u(x)
        matrix, translation = affine_to_matrix(self.affine)
        self._affine_matrix = torch.as_tensor(matrix, dtype=torch.float32, device=self.device)
        points = physical_points(self.image_grid, self.device)
        self._label_points = points @ self._affine_matrix.T + torch.as_tensor(
            translation, dtype=torch.float32, device=self.device
        )

    # ----------------------------------------------------------------- stepping
    @property
    def step_count(self) -> int:
        """Number of steps taken (0 before the first step)."""
        return max(0, len(self.fields) - 1)

    def cancel(self) -> None:
        """Ask ``run`` to stop after the step in progress (thread-safe)."""
        self._cancel.set()

    @property
    def prepared(self) -> bool:
        """True once the affine pre-alignment and working grid exist."""
        return self._prepared

    def run(self, steps: int) -> Iterator[StepReport]:
        """Take ``steps`` more steps from the current state, yielding a report after each.

        A ``cancel()`` made before or during the run (also during ``prepare``) stops it after the step in
        progress and is consumed: the next ``run`` starts afresh.
        """
        self.cancelled = False
        try:
            self.prepare()
            for _ in range(0 if self.decisions.deformable_blocked else int(steps)):
                if self._cancel.is_set():
                    break
                yield self._take_step()
        finally:
            self.cancelled = self._cancel.is_set()
            self._cancel.clear()

    def _take_step(self) -> StepReport:
        start = time.perf_counter()
        previous = self.fields[-1].to(self.device)
        warped = None
        if self.policy.uses_warped:
            # the last report warped the moving image by this very field (not after a step back)
            last_field, warped = self._last_warped
            if last_field is not self.fields[-1]:
                warped = warp(self.moving_tensor, previous)
        state = PolicyState(
            fixed=self.fixed_tensor,
            moving=self.moving_tensor,
            warped=warped,
            field=previous,
            step_index=self.step_count,
            fixed_mask=self.fixed_mask_tensor,
            moving_mask=self.moving_mask_tensor,
            resolution_mm=self.resolution_mm,
        )
        proposal = self.policy.propose(state)
        with torch.no_grad():
            total = compose_displacements(proposal.step_field.detach(), previous)
        uncertainty = getattr(proposal, "uncertainty_map", None)
        uncertainty = None if uncertainty is None else uncertainty.detach().float().cpu()
        self.fields.append(total.cpu())
        self.weight_maps.append(None if proposal.weight_map is None else proposal.weight_map.detach().cpu())
        self.uncertainty_maps.append(uncertainty)
        if not self.options.keep_steps and len(self.fields) > 2:  # forget the step before (not step 0)
            self.fields[-2] = None
            if self.weight_maps[-1] is not None:
                self.weight_maps[-2] = None
            if self.uncertainty_maps[-1] is not None:
                self.uncertainty_maps[-2] = None
        report = self._report(
            self.step_count, total, time.perf_counter() - start, proposal.diagnostics, uncertainty
        )
        self.reports.append(report)
        return report

    def step_back(self) -> int:
        """Undo the last step; returns the number of steps left. Step 0 (affine only) cannot be undone,
        nor a step whose field was not kept (``keep_steps``)."""
        if self.step_count > 0:
            if self.fields[-2] is None:
                raise RuntimeError("this session keeps no earlier steps (SessionOptions.keep_steps)")
            self.fields.pop()
            self.weight_maps.pop()
            self.uncertainty_maps.pop()
            self.reports.pop()
        return self.step_count

    @torch.no_grad()
    def _report(
        self,
        index: int,
        total: torch.Tensor,
        seconds: float,
        diagnostics: dict,
        uncertainty: torch.Tensor | None = None,
    ) -> StepReport:
        field = total
        total = total.to(self.device)
        warped = warp(self.moving_tensor, total)
        self._last_warped = (field, warped)
        weight = similarity_weight(self.fixed_mask_tensor, self.moving_mask_tensor, total)
        similarity = -float(self._report_similarity()(self.fixed_tensor, warped, weight))
        dice = self._dice(total) if self._label_points is not None else None
        # the squared sum over channels, not vector_norm(dim=1): that reduction took seconds per step on a 1 mm grid on CPU
        largest_mm = float(voxel_to_physical(total, self.grid).pow(2).sum(dim=1).amax().sqrt())
        return StepReport(
            index=index,
            similarity=similarity,
            dice=dice,
            step_seconds=seconds,
            elapsed_seconds=time.perf_counter() - getattr(self, "_start_time", time.perf_counter()),
            diagnostics=dict(diagnostics),
            max_displacement_mm=largest_mm,
            uncertainty_mean_mm=None if uncertainty is None else float(uncertainty.mean()),
            uncertainty_max_mm=None if uncertainty is None else float(uncertainty.max()),
        )

    def _report_similarity(self) -> LocalNCC:
        """The reports' local NCC (window 9): on a working grid of more than ``REPORT_MAX_VOXELS`` it is
        averaged over every s-th voxel per axis (the fewest s that keep it under that many) instead of all."""
        shape = self.fixed_tensor.shape[2:]
        stride = 1
        while math.prod(math.ceil(n / stride) for n in shape) > REPORT_MAX_VOXELS:
            stride += 1
        if self._similarity.stride != stride:
            self._similarity = LocalNCC(window=9, stride=stride)
        return self._similarity

    def _dice(self, total: torch.Tensor) -> float:
        """Mean Dice on the output grid with moving labels sampled (nearest) at A(x + u(x))."""
        u_mm = resample_field_to_grid(total, self.grid, self.image_grid)[0].permute(1, 2, 3, 0)
        points = self._label_points + u_mm @ self._affine_matrix.T
        warped = sample_image_at_points(
            self._moving_label_tensor, self._moving_label_grid, points, mode="nearest"
        )
        scores = dice_per_label(self._fixed_label_array, warped[0, 0].cpu().numpy(), self._dice_labels)
        return float(np.mean(list(scores.values()))) if scores else float("nan")

    # ----------------------------------------------------------------- views of a step
    def field_at(self, step: int | None = None) -> torch.Tensor:
        """Total field (1, 3, D, H, W) in working-grid voxels after ``step`` (default: the last)."""
        field = self.fields[self.step_count if step is None else step]
        if field is None:
            raise RuntimeError(f"step {step} was not kept (SessionOptions.keep_steps)")
        return field

    def warped_at(self, step: int | None = None) -> np.ndarray:
        """Normalized moving image warped on the working grid after ``step`` (k, j, i) float32."""
        with torch.no_grad():
            return warp(self.moving_tensor, self.field_at(step).to(self.device))[0, 0].cpu().numpy()

    def weight_map_at(self, step: int | None = None) -> torch.Tensor | None:
        """The policy's lambda map (1, 1, D, H, W) of ``step`` (the latest one available before it)."""
        last = self.step_count if step is None else step
        for candidate in range(last, -1, -1):
            if self.weight_maps[candidate] is not None:
                return self.weight_maps[candidate]
        return None

    def uncertainty_at(self, step: int | None = None) -> torch.Tensor | None:
        """The trajectory spread (1, 1, D, H, W) in mm on the working grid after ``step`` (the latest one
        available up to it: after a sampling policy hands over to test-time optimization, the spread of
        its last sampled step), or None when no step sampled trajectories."""
        last = self.step_count if step is None else step
        for candidate in range(last, -1, -1):
            if self.uncertainty_maps[candidate] is not None:
                return self.uncertainty_maps[candidate]
        return None

    def uncertainty_image(self, step: int | None = None, grid: Grid | None = None) -> sitk.Image | None:
        """``uncertainty_at(step)`` as a float32 image (mm) on ``grid`` (default: the image grid),
        trilinear from the working grid; None when there is none."""
        uncertainty = self.uncertainty_at(step)
        if uncertainty is None:
            return None
        grid = self.image_grid if grid is None else grid
        image = tensor_to_image(uncertainty, self.grid)
        if grid is self.grid:
            return image
        resampler = sitk.ResampleImageFilter()
        resampler.SetReferenceImage(grid.reference_image(sitk.sitkFloat32))
        resampler.SetInterpolator(sitk.sitkLinear)
        resampler.SetUseNearestNeighborExtrapolator(True)  # fixed voxels just outside the working grid
        return resampler.Execute(image)

    def result(self, step: int | None = None) -> RegistrationResult:
        """Transform after ``step`` (default: the last): affine + displacement on the output grid."""
        self.prepare()
        with torch.no_grad():
            u_mm = resample_field_to_grid(self.field_at(step).to(self.device), self.grid, self.output_grid)
            # to the .h5's resolution (``transform_files``): the written transform is exactly this one
            u_mm = torch.round(u_mm / QUANTUM_MM) * QUANTUM_MM
        weight = self.weight_map_at(step)
        return RegistrationResult(
            affine=self.affine,
            field_mm=u_mm[0].permute(1, 2, 3, 0).contiguous().cpu().numpy(),
            weight_map=None if weight is None else tensor_to_image(weight, self.grid),
            reports=list(self.reports[: (self.step_count if step is None else step) + 1]),
            output_grid=self.output_grid,
            uncertainty_map=self.uncertainty_image(step),
            image_grid=self.image_grid,
        )
