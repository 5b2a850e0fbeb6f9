"""The peers of ``accuracy.py`` as (method, pair) runners with its signature ``run_X(fixed, moving, workdir,
args) -> (transform, displacement field)``: ANTs SyN (antspyx defaults), Greedy (picsl-greedy: the brain
recipe of its documentation; NMI for pairs of different contrasts), elastix (itk-elastix default affine +
B-spline maps) and SimpleITK diffeomorphic demons. Each returns our convention: a composite mapping a fixed
point (LPS mm) to the moving point. ``greedy_register`` / ``greedy_transform`` are also used by
``clinical.py`` and the Greedy test."""

from __future__ import annotations


def run_syn(fixed, moving, workdir, args):
    import ants
    import SimpleITK as sitk

    f = ants.from_numpy(
        sitk.GetArrayFromImage(fixed).T.copy(),
        origin=fixed.GetOrigin(),
        spacing=fixed.GetSpacing(),
        direction=_ants_direction(fixed),
    )
    m = ants.from_numpy(
        sitk.GetArrayFromImage(moving).T.copy(),
        origin=moving.GetOrigin(),
        spacing=moving.GetSpacing(),
        direction=_ants_direction(moving),
    )
    result = ants.registration(f, m, type_of_transform="SyN", random_seed=0, outprefix=str(workdir) + "/syn_")
    warp_file, affine_file = result["fwdtransforms"]
    # fwdtransforms = [warp, affine]: a fixed point x maps to affine(x + warp(x)), the same composite as ours
    affine = sitk.ReadTransform(affine_file)
    field = sitk.ReadImage(warp_file, sitk.sitkVectorFloat64)
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    composite.AddTransform(sitk.DisplacementFieldTransform(sitk.Image(field)))
    return composite, field


#: Greedy's settings for brain MRI, from its documentation (greedy.readthedocs.io, "Quick start"): affine
#: with 12 dof, NCC 2x2x2 patch, image-centre initialization, 100x50x10 iterations (4x, 2x, 1x levels);
#: then deformable with the same metric and schedule and its default smoothing (-s 1.732vox 0.7071vox).
GREEDY_AFFINE = "-a -dof 12 -m NCC 2x2x2 -ia-image-centers -n 100x50x10"
GREEDY_DEFORMABLE = "-m NCC 2x2x2 -n 100x50x10 -s 1.732vox 0.7071vox"
#: For different contrasts (Greedy's NCC is signed: on T1 against T2 its affine fails, Dice 0.13): the same
#: schedule with normalized mutual information, Greedy's metric for multi-modal pairs (its rigid example).
GREEDY_MULTIMODAL = ("NCC 2x2x2", "NMI")


def run_greedy(fixed, moving, workdir, args):
    """Greedy (picsl-greedy): affine, then deformable; both stages timed."""
    return greedy_transform(greedy_register(fixed, moving, args.threads))


def run_greedy_nmi(fixed, moving, workdir, args):
    """Greedy with NMI instead of NCC in both stages (``GREEDY_MULTIMODAL``)."""
    return greedy_transform(greedy_register(fixed, moving, args.threads, multimodal=True))


def greedy_register(fixed, moving, threads: int, multimodal: bool = False):
    """A ``Greedy3D`` holding ``affine`` (4x4, fixed RAS point -> moving RAS point) and ``warp`` (ITK
    displacement field, LPS mm, on the fixed grid) for the images registered as ``fixed`` / ``moving``.
    (Two runs of the same pair differ slightly: keep the object to reslice with the same result.)"""
    from picsl_greedy import Greedy3D

    options = f"-d 3 -threads {threads} -V 0"
    affine, deformable = GREEDY_AFFINE, GREEDY_DEFORMABLE
    if multimodal:
        affine, deformable = (text.replace(*GREEDY_MULTIMODAL) for text in (affine, deformable))
    greedy = Greedy3D()
    greedy.execute(f"{options} -i fixed moving {affine} -o affine", fixed=fixed, moving=moving, affine=None)
    greedy.execute(f"{options} -i fixed moving -it affine {deformable} -o warp", warp=None)
    return greedy


def greedy_transform(greedy):
    """Greedy's result as our composite x -> A(x + u(x)) (LPS) and its displacement field."""
    import numpy as np
    import SimpleITK as sitk

    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    matrix = flip @ np.asarray(greedy["affine"], dtype=np.float64) @ flip  # RAS -> LPS
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(matrix[:3, :3].ravel().tolist())
    affine.SetTranslation(matrix[:3, 3].tolist())
    field = sitk.Cast(greedy["warp"], sitk.sitkVectorFloat64)
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    composite.AddTransform(sitk.DisplacementFieldTransform(sitk.Image(field)))
    return composite, field


def _ants_direction(image):
    import numpy as np

    return np.asarray(image.GetDirection()).reshape(3, 3)


def run_elastix(fixed, moving, workdir, args):
    import itk
    import numpy as np
    import SimpleITK as sitk

    f = _to_itk(fixed)
    m = _to_itk(moving)
    params = itk.ParameterObject.New()
    params.AddParameterMap(params.GetDefaultParameterMap("affine"))
    params.AddParameterMap(params.GetDefaultParameterMap("bspline"))
    _, result_params = itk.elastix_registration_method(
        f, m, parameter_object=params, log_to_console=False, output_directory=str(workdir)
    )
    field = itk.transformix_deformation_field(m, result_params)
    array = np.asarray(itk.array_view_from_image(field), dtype=np.float64)
    field_img = sitk.GetImageFromArray(array, isVector=True)
    field_img.CopyInformation(fixed)
    return sitk.DisplacementFieldTransform(sitk.Image(field_img)), field_img


def _to_itk(image):
    import itk
    import numpy as np
    import SimpleITK as sitk

    out = itk.image_from_array(sitk.GetArrayFromImage(image).astype(np.float32))
    out.SetOrigin(image.GetOrigin())
    out.SetSpacing(image.GetSpacing())
    out.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection()).reshape(3, 3)))
    return out


def run_demons(fixed, moving, workdir, args):
    import SimpleITK as sitk

    from RLRegistrationLib.io.imaging import affine_prealign

    affine = affine_prealign(fixed, moving, seed=0)
    moving_a = sitk.Resample(sitk.Cast(moving, sitk.sitkFloat32), fixed, affine, sitk.sitkLinear, 0.0)
    fixed_f = sitk.Cast(fixed, sitk.sitkFloat32)
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetSmoothDisplacementField(True)
    demons.SetStandardDeviations(1.5)
    field = sitk.Image(fixed.GetSize(), sitk.sitkVectorFloat64)
    field.CopyInformation(fixed)
    for shrink, iterations in ((4, 50), (2, 30), (1, 10)):
        f = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed_f, shrink * 0.5), [shrink] * 3)
        m = sitk.Shrink(sitk.SmoothingRecursiveGaussian(moving_a, shrink * 0.5), [shrink] * 3)
        init = sitk.Resample(field, f, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
        demons.SetNumberOfIterations(iterations)
        level = demons.Execute(f, m, init)
        field = sitk.Resample(level, fixed, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    composite.AddTransform(sitk.DisplacementFieldTransform(sitk.Image(field)))
    return composite, field
