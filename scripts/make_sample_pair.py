"""Generate the embedded demo pair in ``RLRegistration/RLRegistrationLib/sample_data/``.

Fixed = SynthSeg training label map 01, moving = 02 (two different real subjects). Each label map is
skull-stripped, cropped to its brain bounding box plus a margin, synthesized at 1 mm with the fixed T1-like
contrast, and downsampled to 2 mm isotropic (anti-aliased image, nearest-neighbour labels). The moving
image and labels get their origin shifted by (5, -3, 4) mm so that geometry handling is exercised.
Images are stored as int16 (intensity [0, 1] -> 0..1000), labels as uint8 with FreeSurfer values.

Usage (from the repository root):

    python scripts/make_sample_pair.py [--shared-dir ../shared/data] [--out-dir ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "RLRegistration"))

from RLRegistrationLib import synthesis  # noqa: E402

DEFAULT_SHARED_DIR = REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUT_DIR = REPO_ROOT / "RLRegistration" / "RLRegistrationLib" / "sample_data"

FIXED_SUBJECT = 1
MOVING_SUBJECT = 2
SPACING_MM = 2.0
MOVING_ORIGIN_SHIFT_MM = (5.0, -3.0, 4.0)
# fixed physical field of view (x, y, z) in mm: keeps the demo's working grid small (80x96x96 at 2 mm)
CROP_MM = (160, 192, 176)
INTENSITY_SCALE = 1000
SEED = 2024


def prepare_subject(path: Path, seed: int) -> tuple[sitk.Image, sitk.Image]:
    """Skull-stripped, brain-cropped 2 mm (image int16, labels uint8) for one SynthSeg label map."""
    labels_img = synthesis.load_label_map(path)
    labels = synthesis.skull_strip_labels(sitk.GetArrayFromImage(labels_img))
    stripped = sitk.GetImageFromArray(labels)
    stripped.CopyInformation(labels_img)

    # centre on the brain without brainstem (16) and CSF (24): both run down the spinal canal
    cerebrum = synthesis.brain_mask(labels) & ~np.isin(labels, (16, 24))
    lo, hi = synthesis.bounding_box_xyz(cerebrum)
    size = [int(round(mm / sp)) for mm, sp in zip(CROP_MM, labels_img.GetSpacing())]
    center = [(low + h) / 2.0 for low, h in zip(lo, hi)]
    cropped = synthesis.crop_image_xyz(stripped, center, size)

    image_1mm = synthesis.synthesize_volume(cropped, contrast="t1", rng=np.random.default_rng(seed))
    labels_2mm = synthesis.downsample_labels(cropped, SPACING_MM)
    image_2mm = synthesis.downsample_image(image_1mm, SPACING_MM)

    scaled = np.clip(sitk.GetArrayFromImage(image_2mm), 0.0, 1.0) * INTENSITY_SCALE
    image_out = sitk.GetImageFromArray(np.rint(scaled).astype(np.int16))
    image_out.CopyInformation(labels_2mm)

    label_array = sitk.GetArrayFromImage(labels_2mm)
    dtype = np.uint8 if label_array.max() < 256 else np.uint16
    labels_out = sitk.GetImageFromArray(label_array.astype(dtype))
    labels_out.CopyInformation(labels_2mm)
    return image_out, labels_out


def shift_origin(image: sitk.Image, shift_mm: tuple[float, float, float]) -> sitk.Image:
    """Copy of ``image`` whose origin is moved by ``shift_mm`` (physical LPS mm)."""
    out = sitk.Image(image)
    out.SetOrigin([o + s for o, s in zip(image.GetOrigin(), shift_mm)])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared-dir",
        type=Path,
        default=DEFAULT_SHARED_DIR,
        help="shared data folder holding synthseg/ (default: %(default)s)",
    )
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="default: %(default)s")
    args = parser.parse_args(argv)

    synthseg = args.shared_dir / "synthseg"
    if not synthseg.is_dir():
        print(
            f"error: {synthseg} not found. The demo pair is generated from the shared SynthSeg label maps "
            "(../shared/data/synthseg relative to the repository root); pass --shared-dir.",
            file=sys.stderr,
        )
        return 2

    args.out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {}
    for role, subject in (("fixed", FIXED_SUBJECT), ("moving", MOVING_SUBJECT)):
        path = synthseg / f"training_seg_{subject:02d}.nii.gz"
        if not path.is_file():
            print(f"error: {path} not found", file=sys.stderr)
            return 2
        image, labels = prepare_subject(path, SEED + subject)
        if role == "moving":
            image = shift_origin(image, MOVING_ORIGIN_SHIFT_MM)
            labels = shift_origin(labels, MOVING_ORIGIN_SHIFT_MM)
        outputs[f"{role}.nii.gz"] = image
        outputs[f"{role}_labels.nii.gz"] = labels

    total = 0
    for name, image in outputs.items():
        target = args.out_dir / name
        sitk.WriteImage(image, str(target), useCompression=True)
        total += target.stat().st_size
        print(
            f"{target}: size {image.GetSize()} spacing {image.GetSpacing()} origin "
            f"{tuple(round(o, 3) for o in image.GetOrigin())} {image.GetPixelIDTypeAsString()}, "
            f"{target.stat().st_size} bytes"
        )
    print(f"total {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
