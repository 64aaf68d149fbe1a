"""3-D sources: NIfTI volumes (nibabel) and DICOM series (pydicom) → axial uint8 squares.

Both go through the same steps: robust percentile normalisation per volume, the slices where the
brain is present (foreground area ≥ ``min_area_fraction`` of the largest slice's), an optional even
thinning to ``slices_per_volume``, and an aspect-true fit to the target size using the voxel spacing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from brainsynth.config import VolumeConfig
from brainsynth.data.folder import Decoded
from brainsynth.data.imaging import fit_square

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIX = ".dcm"
FOREGROUND = 0.1  # normalised intensity above which a voxel counts as brain (background is ~0)


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_dicom(path: Path) -> bool:
    """A ``.dcm`` file, or an extension-less file with the DICOM preamble (as scanners write them)."""
    if path.suffix.lower() == DICOM_SUFFIX:
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def planes_to_images(planes: np.ndarray, row_mm: float, col_mm: float, cfg: VolumeConfig, size: int) -> tuple[np.ndarray | None, str, int]:
    """(n, H, W) raw intensities in display orientation → ((k, size, size) uint8, '', n_upsampled),
    or (None, reason, 0) when nothing usable is in it. The output pixel is ``output_pixel_mm`` wide."""
    planes = np.nan_to_num(planes.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = np.percentile(planes, cfg.intensity_percentiles)
    if not hi > lo:
        return None, "blank_volume", 0
    normalised = np.clip((planes - lo) / (hi - lo), 0.0, 1.0)
    area = (normalised > FOREGROUND).sum(axis=(1, 2))
    if area.max() == 0:
        return None, "blank_volume", 0
    keep = np.flatnonzero(area >= cfg.min_area_fraction * area.max())
    if cfg.slices_per_volume and len(keep) > cfg.slices_per_volume:
        keep = keep[np.round(np.linspace(0, len(keep) - 1, cfg.slices_per_volume)).astype(int)]
    height, width = planes.shape[1:]
    physical = (width * col_mm, height * row_mm)
    images = np.stack([fit_square(Image.fromarray(np.round(normalised[k] * 255).astype(np.uint8)), size, physical) for k in keep])
    upsampled = len(keep) if max(height, width) < size else 0
    return images, "", upsampled


def output_pixel_mm(height: int, width: int, row_mm: float, col_mm: float, size: int) -> float:
    """In-plane size (mm) of one output pixel: ``fit_square`` scales the longer physical side to ``size``."""
    return max(height * row_mm, width * col_mm) / size


def decode_nifti(path: Path, cfg: VolumeConfig, size: int) -> Decoded:
    """One NIfTI volume, reoriented to RAS+, sliced along ``cfg.slice_axis`` (2 = axial)."""
    import nibabel as nib

    try:
        if path.stat().st_size == 0:
            return Decoded(skipped=[(str(path), "empty_file")])
        image = nib.load(path)
        if len(image.shape) == 4 and image.shape[3] == 1:
            image = image.slicer[..., 0]
        if len(image.shape) > 3:
            return Decoded(skipped=[(str(path), "volume_4d")])
        if len(image.shape) < 3:
            return Decoded(skipped=[(str(path), "not_3d")])
        image = nib.as_closest_canonical(image)
        volume = np.asanyarray(image.dataobj, dtype=np.float32)
        spacing = [float(z) for z in image.header.get_zooms()[:3]]
    except (EOFError, ValueError) as err:  # gzip/array shorter than its header says
        return Decoded(skipped=[(str(path), "truncated" if "eof" in type(err).__name__.lower() or "size" in str(err) else "unreadable")])
    except Exception:  # nibabel raises many types (ImageFileError, zlib.error, OSError, …) for a bad file
        return Decoded(skipped=[(str(path), "unreadable")])
    # Slicing axis first; rotating the two in-plane axes by 90° puts anterior (axial) or superior
    # (coronal, sagittal) at the top of the image.
    axis = cfg.slice_axis
    in_plane = [a for a in range(3) if a != axis]
    planes = np.rot90(np.moveaxis(volume, axis, 0), axes=(1, 2))
    row_mm, col_mm = spacing[in_plane[1]], spacing[in_plane[0]]
    images, reason, upsampled = planes_to_images(planes, row_mm=row_mm, col_mm=col_mm, cfg=cfg, size=size)
    if images is None:
        return Decoded(skipped=[(str(path), reason)])
    pixel_mm = output_pixel_mm(*planes.shape[1:], row_mm, col_mm, size)
    return Decoded(images=images, upsampled=upsampled, pixel_mm=pixel_mm)  # the subject comes from its path (ingest)


def _slice_position(ds, fallback: int) -> float:
    """Position of a DICOM slice along its normal (ImagePositionPatient · (row × column)),
    else its InstanceNumber, else its order in the folder."""
    try:
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        return float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal))
    except (AttributeError, ValueError, TypeError):
        pass
    try:
        return float(ds.InstanceNumber)
    except (AttributeError, ValueError, TypeError):
        return float(fallback)


def decode_dicom_series(files: list[Path], series_name: str, cfg: VolumeConfig, size: int) -> Decoded:
    """One DICOM series (a folder of slices) → its brain slices, with rescale slope/intercept applied."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    skipped: list[tuple[str, str]] = []
    slices: list[tuple[float, np.ndarray, str]] = []  # (position, pixels, file)
    spacing, subject = (1.0, 1.0), ""
    for order, path in enumerate(files):
        try:
            if path.stat().st_size == 0:
                skipped.append((str(path), "empty_file"))
                continue
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, EOFError) as err:
            skipped.append((str(path), "truncated" if isinstance(err, EOFError) else "unreadable"))
            continue
        except Exception:  # pydicom raises assorted errors on damaged headers
            skipped.append((str(path), "unreadable"))
            continue
        if "PixelData" not in ds:
            skipped.append((str(path), "no_pixel_data"))
            continue
        try:
            pixels = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        except Exception as err:  # pixel data shorter than rows × columns, unsupported transfer syntax, …
            skipped.append((str(path), "truncated" if "length" in str(err).lower() or "truncat" in str(err).lower() else "unreadable"))
            continue
        frames = pixels if pixels.ndim == 3 else pixels[None]
        position = _slice_position(ds, order)
        for index, frame in enumerate(frames):
            slices.append((position + index * 1e-3, frame, str(path)))
        if "PixelSpacing" in ds:
            spacing = (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))
        subject = subject or str(getattr(ds, "PatientID", "") or "").strip()
    if not slices:
        return Decoded(skipped=skipped)
    common_shape = Counter(frame.shape for _, frame, _ in slices).most_common(1)[0][0]
    skipped.extend((path, "inconsistent_shape") for _, frame, path in slices if frame.shape != common_shape)
    slices = sorted((item for item in slices if item[1].shape == common_shape), key=lambda item: item[0])
    planes = np.stack([frame for _, frame, _ in slices])
    images, reason, upsampled = planes_to_images(planes, row_mm=spacing[0], col_mm=spacing[1], cfg=cfg, size=size)
    if images is None:
        return Decoded(skipped=skipped + [(path, reason) for path in sorted({item[2] for item in slices})])
    return Decoded(images=images, subject=subject or series_name, patient_id=bool(subject), skipped=skipped, upsampled=upsampled,
                   pixel_mm=output_pixel_mm(*planes.shape[1:], spacing[0], spacing[1], size))
