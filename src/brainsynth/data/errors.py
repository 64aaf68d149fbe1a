"""Errors and per-file skip reasons shared by every data source."""

from __future__ import annotations


class DataError(ValueError):
    """A problem with the user's data; its message is one line naming the path (and the key to change)."""


# Why a file was left out; the keys appear as ``skipped_<reason>`` in metrics/prepare.json.
SKIP_REASONS = {
    "empty_file": "zero bytes",
    "unreadable": "cannot be decoded",
    "truncated": "file ends early",
    "unsupported_file": "not an image/volume of the chosen format",
    "outside_class_folder": "lies beside the class folders, not in one",
    "volume_4d": "4-D volume (a time series?), only 3-D volumes are sliced",
    "not_3d": "volume with fewer than 3 dimensions",
    "blank_volume": "no voxel above the background",
    "no_pixel_data": "DICOM file without pixel data",
    "inconsistent_shape": "DICOM slice whose size differs from the rest of its series",
}
