"""Physical-space conventions: image grids, LPS/RAS, and unit conversions of displacement fields.

This is the one module that knows how voxel, normalized (``grid_sample`` with ``align_corners=True``) and
physical (millimetre, ITK LPS) coordinates relate. Conventions used everywhere in the library:

* Physical space is ITK's LPS in millimetres. ``x = origin + direction @ diag(spacing) @ index``.
* A displacement field ``u`` lives on the *fixed* grid and maps a fixed point to the moving point:
  ``T(x) = x + u(x)`` (the resampling direction, Slicer's "transform from parent").
* Tensors are ``(B, C, D, H, W)`` with ``D`` = index axis k (slowest), ``W`` = index axis i (fastest).
* Displacement tensors have 3 channels ordered like the ITK index, ``(i, j, k)``, in voxel units of the grid
  they live on. This is also the order ``grid_sample`` expects in the last axis of its sampling grid.
* Slicer uses RAS: the first two physical components change sign.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

if TYPE_CHECKING:
    import torch

# The tensor functions import torch themselves: grids, reading images and the pre-alignment need only
# SimpleITK, so the command line can import torch while it reads the inputs (frontends.register_command).

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Grid:
    """A 3D image grid: size (i, j, k) in voxels, spacing in mm, origin in mm (LPS), direction (3x3)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # row-major 3x3, as SimpleITK

    @classmethod
    def from_image(cls, image: sitk.Image) -> Grid:
        return cls(
            tuple(int(s) for s in image.GetSize()),
            tuple(float(s) for s in image.GetSpacing()),
            tuple(float(o) for o in image.GetOrigin()),
            tuple(float(d) for d in image.GetDirection()),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (k, j, i) = (D, H, W)."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def index_to_physical_matrix(self) -> np.ndarray:
        """3x3 matrix ``direction @ diag(spacing)``: index offsets (i, j, k) to mm (LPS)."""
        return self.direction_matrix @ np.diag(self.spacing)

    def affine(self) -> np.ndarray:
        """4x4 homogeneous matrix from continuous index (i, j, k) to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.index_to_physical_matrix
        m[:3, 3] = self.origin
        return m

    def reference_image(self, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
        image = sitk.Image([int(s) for s in self.size], pixel_type)
        self.apply_to(image)
        return image

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def physical_extent_corners(self) -> np.ndarray:
        """The 8 corner voxel centres in LPS mm, shape (8, 3)."""
        corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float64)
        corners *= np.asarray(self.size, dtype=np.float64) - 1
        return corners @ self.index_to_physical_matrix.T + np.asarray(self.origin)


def canonical_axes(direction: np.ndarray) -> tuple[list[int], np.ndarray]:
    """(order, signs): the reference's index axes reordered and flipped so that axis ``a`` of the result
    runs along physical axis ``a`` (L, P, S) in the positive direction, as closely as the direction allows.
    Two copies of one image whose voxels are stored in another order give the same working grid."""
    dominant = np.abs(direction).argmax(axis=0)  # the physical axis each index axis runs along
    order = [int(c) for c in np.argsort(dominant, kind="stable")]
    if sorted(dominant.tolist()) != [0, 1, 2]:  # an oblique direction with two axes along one: keep its order
        order = [0, 1, 2]
    signs = np.sign(direction[dominant[order], order])
    return order, np.where(signs == 0, 1.0, signs)


def images_resolution(*images: sitk.Image) -> tuple[float, float, float]:
    """The coarsest voxel size (mm) of ``images`` along the working grid's array axes (D, H, W): each
    image's spacing along the index axis closest to each of L, P, S (``canonical_axes``)."""
    worst = np.zeros(3)
    for image in images:
        order, _ = canonical_axes(np.asarray(image.GetDirection()).reshape(3, 3))
        worst = np.maximum(worst, np.asarray(image.GetSpacing())[order])
    return tuple(float(v) for v in worst[::-1])


def working_grid(
    reference: Grid, spacing_mm: float, multiple: int = 16, max_voxels: int | None = None
) -> Grid:
    """Isotropic grid covering the reference's field of view (centred), its axes those of the reference
    put in canonical order (``canonical_axes``): the same grid whatever order the voxels are stored in.

    The field of view of n voxels of spacing s is n * s mm (each voxel is a cell), so 160 voxels at 1 mm
    become 80 at 2 mm. Every dimension is a multiple of ``multiple`` (network down-sampling). When
    ``max_voxels`` is given the spacing is increased until the grid fits.
    """
    if max_voxels is not None and max_voxels < multiple**3:
        raise ValueError(f"max_voxels={max_voxels} is below the smallest possible grid ({multiple}^3)")
    order, signs = canonical_axes(reference.direction_matrix)
    field_of_view = (np.asarray(reference.size) * np.asarray(reference.spacing))[order]
    spacing = float(spacing_mm)
    while True:
        size = np.maximum(multiple, np.ceil(field_of_view / spacing / multiple - 1e-9) * multiple).astype(int)
        if max_voxels is None or int(np.prod(size)) <= max_voxels:
            break
        spacing *= 1.05
    ref_center_index = (np.asarray(reference.size) - 1) / 2.0
    center = reference.index_to_physical_matrix @ ref_center_index + np.asarray(reference.origin)
    direction = reference.direction_matrix[:, order] * signs
    origin = center - direction @ ((size - 1) / 2.0 * spacing)
    return Grid(
        tuple(int(s) for s in size),
        (spacing, spacing, spacing),
        tuple(float(o) for o in origin),
        tuple(float(d) for d in direction.ravel()),
    )


def padded_grid(grid: Grid, cells: int = 1) -> Grid:
    """``grid`` grown by ``cells`` voxels on every side (same spacing and direction)."""
    offset = grid.index_to_physical_matrix @ np.full(3, -float(cells))
    return Grid(
        tuple(int(n) + 2 * cells for n in grid.size),
        grid.spacing,
        tuple(float(o) for o in np.asarray(grid.origin) + offset),
        grid.direction,
    )


def field_grid(fixed: Grid, working: Grid, choice: str = "auto") -> Grid:
    """The grid a result's displacement field is written on: ``"fixed"`` the fixed image's, ``"working"``
    the working grid's, ``"auto"`` the working grid grown by one voxel when it has fewer voxels than the
    fixed grid (the field is computed there; sampled linearly, as ITK's displacement field transform does,
    it is the same transform at every fixed voxel: the extra layer repeats the border as the sampling on the
    fixed grid clamps it), else the fixed grid."""
    if choice == "fixed":
        return fixed
    if choice == "working":
        return working
    padded = padded_grid(working)
    return padded if np.prod(padded.size, dtype=np.int64) < np.prod(fixed.size, dtype=np.int64) else fixed


def physical_points(grid: Grid, device: torch.device | str = "cpu") -> torch.Tensor:
    """LPS coordinates (mm) of every voxel centre, tensor of shape (D, H, W, 3), float32."""
    import torch

    k, j, i = (torch.arange(n, dtype=torch.float64, device=device) for n in grid.shape)
    kk, jj, ii = torch.meshgrid(k, j, i, indexing="ij")
    index = torch.stack([ii, jj, kk], dim=-1)
    m = torch.as_tensor(grid.index_to_physical_matrix, dtype=torch.float64, device=device)
    o = torch.as_tensor(grid.origin, dtype=torch.float64, device=device)
    return (index @ m.T + o).float()


def physical_to_normalized(points: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Map LPS points (..., 3) in mm to ``grid_sample`` coordinates of ``grid`` (align_corners=True)."""
    import torch

    inv = np.linalg.inv(grid.index_to_physical_matrix)
    inv_t = torch.as_tensor(inv, dtype=points.dtype, device=points.device)
    o = torch.as_tensor(grid.origin, dtype=points.dtype, device=points.device)
    index = (points - o) @ inv_t.T
    size = torch.as_tensor(grid.size, dtype=points.dtype, device=points.device)
    return 2.0 * index / (size - 1).clamp(min=1) - 1.0


def normalized_map_between_grids(target: Grid, source: Grid) -> np.ndarray:
    """3x4 ``theta`` for ``F.affine_grid`` (align_corners=True): normalized coordinates of ``target``'s voxels
    -> normalized coordinates of the same physical points in ``source``. Exact for any two grids, because
    index -> mm -> index is affine."""
    half_target = np.diag((np.asarray(target.size, dtype=np.float64) - 1) / 2.0)
    to_source = np.diag(2.0 / np.maximum(np.asarray(source.size, dtype=np.float64) - 1, 1))
    source_inv = np.linalg.inv(source.index_to_physical_matrix)
    linear = to_source @ source_inv @ target.index_to_physical_matrix @ half_target
    offset = (
        to_source
        @ source_inv
        @ (
            target.index_to_physical_matrix @ half_target @ np.ones(3)
            + np.asarray(target.origin)
            - np.asarray(source.origin)
        )
        - 1.0
    )
    return np.concatenate([linear, offset[:, None]], axis=1)


def voxel_to_normalized(displacement: torch.Tensor) -> torch.Tensor:
    """Scale a voxel-unit displacement (B, 3, D, H, W), channels (i, j, k), to normalized units."""
    import torch

    d, h, w = displacement.shape[2:]
    scale = torch.tensor([w - 1, h - 1, d - 1], dtype=displacement.dtype, device=displacement.device)
    return displacement * (2.0 / scale.clamp(min=1)).view(1, 3, 1, 1, 1)


def voxel_to_physical(displacement: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Voxel-unit displacement (B, 3, D, H, W), channels (i, j, k), to LPS mm vectors (same layout)."""
    import torch

    m = torch.as_tensor(grid.index_to_physical_matrix, dtype=displacement.dtype, device=displacement.device)
    return torch.einsum("ab,nbdhw->nadhw", m, displacement)


def physical_to_voxel(displacement: torch.Tensor, grid: Grid) -> torch.Tensor:
    """LPS mm displacement (B, 3, D, H, W) to voxel units (i, j, k) of ``grid``."""
    import torch

    inv = np.linalg.inv(grid.index_to_physical_matrix)
    m = torch.as_tensor(inv, dtype=displacement.dtype, device=displacement.device)
    return torch.einsum("ab,nbdhw->nadhw", m, displacement)


def image_to_tensor(image: sitk.Image, device: torch.device | str = "cpu") -> torch.Tensor:
    """Scalar SimpleITK image to a float32 tensor (1, 1, D, H, W)."""
    import torch

    array = sitk.GetArrayViewFromImage(image).astype(np.float32, copy=True)
    return torch.from_numpy(array)[None, None].to(device)


def tensor_to_image(tensor: torch.Tensor, grid: Grid) -> sitk.Image:
    """Tensor (1, 1, D, H, W) or (D, H, W) to a float32 SimpleITK image on ``grid``."""
    array = tensor.detach().reshape(grid.shape).float().cpu().numpy()
    return grid.apply_to(sitk.GetImageFromArray(array))


def field_tensor_to_image(field_mm: torch.Tensor, grid: Grid) -> sitk.Image:
    """Physical displacement (1, 3, D, H, W) in LPS mm to a sitkVectorFloat64 image on ``grid``."""
    array = field_mm.detach()[0].permute(1, 2, 3, 0).double().cpu().numpy()
    return grid.apply_to(sitk.GetImageFromArray(array, isVector=True))


def field_image_to_tensor(field: sitk.Image, device: torch.device | str = "cpu") -> torch.Tensor:
    """Vector image of LPS mm displacements to a tensor (1, 3, D, H, W) float32."""
    import torch

    array = sitk.GetArrayFromImage(field).astype(np.float32)
    return torch.from_numpy(array).permute(3, 0, 1, 2)[None].contiguous().to(device)


def affine_to_matrix(transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    """(A, t) with ``transform(x) = A @ x + t`` for any linear SimpleITK transform (or identity)."""
    if transform is None:
        return np.eye(3), np.zeros(3)
    dim = 3
    origin = np.zeros(dim)
    t = np.asarray(transform.TransformPoint(tuple(origin)))
    a = np.stack([np.asarray(transform.TransformPoint(tuple(e))) - t for e in np.eye(dim)], axis=1)
    return a, t


def affine_from_matrix(matrix: np.ndarray) -> sitk.AffineTransform:
    """SimpleITK affine transform of a 4x4 homogeneous point map (same coordinate system)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(matrix[:3, :3].ravel()))
    transform.SetTranslation(tuple(matrix[:3, 3]))
    return transform


def flatten_linear(transform: sitk.Transform | None) -> sitk.AffineTransform:
    """One AffineTransform equal to any linear transform (or composite of linear ones); None -> identity."""
    matrix, translation = affine_to_matrix(transform)
    homogeneous = np.eye(4)
    homogeneous[:3, :3], homogeneous[:3, 3] = matrix, translation
    return affine_from_matrix(homogeneous)


def ras_grid_from_lps(grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin_ras, spacing, direction_ras 3x3) of a grid for Slicer/VTK."""
    origin_ras = LPS_TO_RAS @ np.asarray(grid.origin)
    direction_ras = LPS_TO_RAS @ grid.direction_matrix
    return origin_ras, np.asarray(grid.spacing, dtype=np.float64), direction_ras


def ijk_to_ras_matrix(grid: Grid) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a grid, as Slicer's volume nodes store it."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ grid.affine()


def lps_vectors_to_ras(vectors: np.ndarray) -> np.ndarray:
    """Flip the first two components of (..., 3) vectors or points between LPS and RAS."""
    out = np.array(vectors, dtype=np.float64, copy=True)
    out[..., :2] *= -1.0
    return out
