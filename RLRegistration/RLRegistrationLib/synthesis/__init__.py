"""Synthetic images and pairs from label maps (the SynthMorph recipe), in numpy and SimpleITK only.

* ``contrast``: intensity images from label maps (contrast tables, texture, bias field, blur, noise);
* ``pairs``: crops and grids, smooth random deformations, the 1 mm validation pairs;
* ``followup``: same-subject whole-head follow-up pairs with a known transform.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "EXTRA_CEREBRAL_MIN_LABEL": "contrast",
        "T1_LIKE": "contrast",
        "T2_LIKE": "contrast",
        "as_rng": "contrast",
        "smooth_random_field": "contrast",
        "load_label_map": "contrast",
        "brain_mask": "contrast",
        "skull_strip_labels": "contrast",
        "contrast_table": "contrast",
        "synthesize_image": "contrast",
        "synthesize_volume": "contrast",
        "VALIDATION_SIZE_XYZ": "pairs",
        "crop_or_pad_center": "pairs",
        "isotropic_grid": "pairs",
        "downsample_labels": "pairs",
        "downsample_image": "pairs",
        "crop_image_xyz": "pairs",
        "bounding_box_xyz": "pairs",
        "random_smooth_deformation": "pairs",
        "subject_path": "pairs",
        "validation_pair": "pairs",
        "FollowUpPair": "followup",
        "follow_up_pair": "followup",
        "follow_up_from_labels": "followup",
    },
)
