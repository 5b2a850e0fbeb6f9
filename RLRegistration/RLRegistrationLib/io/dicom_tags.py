"""What DICOM headers say about a pair: the same study (one session, one frame of reference), the same
patient (another visit), or different patients. NIfTI, NRRD and MetaImage files carry none of this: the
kind of such a pair is then found from the images (``registration.pair_kind``)."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from .quiet import quiet_native_stderr

PATIENT_ID = "0010|0020"
STUDY_UID = "0020|000d"
FRAME_OF_REFERENCE_UID = "0020|0052"


def series_tags(path: str | Path) -> dict[str, str]:
    """{tag: value} of the patient, study and frame of reference of a DICOM series folder (its first
    file's header), or {} for anything else (a file, a folder without DICOM, unreadable headers)."""
    folder = Path(path)
    if not folder.is_dir():
        return {}
    try:
        with quiet_native_stderr():
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
            if not files:
                return {}
            reader = sitk.ImageFileReader()
            reader.SetFileName(files[0])
            reader.LoadPrivateTagsOff()
            reader.ReadImageInformation()
    except RuntimeError:
        return {}
    keys = set(reader.GetMetaDataKeys())
    return {
        tag: reader.GetMetaData(tag).strip()
        for tag in (PATIENT_ID, STUDY_UID, FRAME_OF_REFERENCE_UID)
        if tag in keys
    }


def pair_kind_from_tags(fixed: dict[str, str], moving: dict[str, str]) -> tuple[str, str] | None:
    """(kind, reason) from two series' tags: "same-session" (one study or frame of reference),
    "same-patient" (one patient ID, another study) or "different-subjects"; None when either lacks them."""

    def same(tag: str) -> bool | None:
        if fixed.get(tag) and moving.get(tag):
            return fixed[tag] == moving[tag]
        return None

    if same(STUDY_UID) or same(FRAME_OF_REFERENCE_UID):
        return "same-session", "the DICOM series share their study (StudyInstanceUID / FrameOfReferenceUID)"
    patient = same(PATIENT_ID)
    if patient is True:
        return "same-patient", "the DICOM series share their PatientID, not their study"
    if patient is False:
        return "different-subjects", "the DICOM series have different PatientIDs"
    return None
