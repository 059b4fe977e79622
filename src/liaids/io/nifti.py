"""NIfTI reading and writing through SimpleITK, with the geometry kept in ITK's LPS convention."""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813 - the usual alias

from liaids.errors import LiaidsError, StudyReadError
from liaids.types import Volume

_INT16_RANGE = (np.iinfo(np.int16).min, np.iinfo(np.int16).max)
_CHUNK = 1 << 22


def _is_nifti_name(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _expected_nifti_bytes(header: bytes, path: Path) -> int | None:
    """Bytes a single-file NIfTI-1/2 must hold (header + voxels), or None for a .hdr/.img pair.

    Raises:
        StudyReadError: the header is not a NIfTI header.
    """
    if len(header) < 348:
        raise StudyReadError("not a NIfTI file (shorter than a NIfTI header)", path)
    for endian in "<>":
        size = struct.unpack(endian + "i", header[:4])[0]
        if size == 348 and header[344:347] in (b"n+1", b"ni1"):
            if header[344:347] == b"ni1":
                return None
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if size == 540 and len(header) >= 540 and header[4:7] in (b"n+2", b"ni2"):
            if header[4:7] == b"ni2":
                return None
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            vox_offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        raise StudyReadError("not a NIfTI file (no NIfTI-1/2 header)", path)
    ndim = int(dims[0])
    if not 1 <= ndim <= 7:
        raise StudyReadError(f"corrupt NIfTI header (dim[0] = {ndim})", path)
    nvox = int(np.prod([max(int(d), 1) for d in dims[1 : ndim + 1]], dtype=np.int64))
    return int(vox_offset) + nvox * max(int(bitpix), 8) // 8


def _check_complete(path: Path) -> None:
    """Fail on a truncated file or gzip stream, which ITK would otherwise read as zeros.

    Raises:
        StudyReadError: missing, not NIfTI, not gzip, truncated or corrupt.
    """
    if path.name.lower().endswith(".gz"):
        try:
            with gzip.open(path, "rb") as fh:
                header = fh.read(540)
                expected = _expected_nifti_bytes(header, path)
                total = len(header)
                # Stream the rest: decompressing checks the gzip CRC and length without keeping the data.
                while chunk := fh.read(_CHUNK):
                    total += len(chunk)
        except gzip.BadGzipFile as exc:
            raise StudyReadError(f"not a gzip file although named .gz ({exc})", path) from exc
        except (EOFError, zlib.error) as exc:
            raise StudyReadError(f"truncated or corrupt gzip stream ({exc})", path) from exc
    else:
        with open(path, "rb") as fh:
            header = fh.read(540)
        expected = _expected_nifti_bytes(header, path)
        total = path.stat().st_size
    if expected is not None and total < expected:
        raise StudyReadError(f"truncated NIfTI: {total} bytes of data, header needs {expected}", path)


def read_nifti(path: str | Path) -> Volume:
    """Read a 3D NIfTI file (``.nii`` or ``.nii.gz``).

    The array keeps the file's data type (a label map stays integer; scaled data come back as float).
    Geometry is ITK's: LPS millimetres, direction columns = the file's ``i, j, k`` axes.

    Args:
        path: the NIfTI file.

    Returns:
        The volume, with ``meta`` = ``{"source": ..., "format": "nifti"}``.

    Raises:
        StudyReadError: the file is missing, not NIfTI, truncated, corrupt, not 3D or not scalar.
    """
    path = Path(path)
    if not path.is_file():
        raise StudyReadError("no such file" if not path.exists() else "not a file", path)
    _check_complete(path)
    reader = sitk.ImageFileReader()
    reader.SetImageIO("NiftiImageIO")
    reader.SetFileName(str(path))
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise StudyReadError(f"cannot read NIfTI ({detail})", path) from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise StudyReadError(
            f"not a scalar image ({image.GetNumberOfComponentsPerPixel()} components per voxel)", path
        )
    size = image.GetSize()
    if image.GetDimension() == 4 and size[3] == 1:
        image = image[:, :, :, 0]  # a 3D volume stored with a singleton time axis
    elif image.GetDimension() != 3:
        raise StudyReadError(f"not a 3D volume (size {'x'.join(map(str, size))})", path)
    array = sitk.GetArrayFromImage(image)
    return Volume(
        array=array,
        spacing=tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in image.GetDirection()),
        meta={"source": str(path), "format": "nifti"},
    )


def _array_for_writing(array: np.ndarray, path: Path) -> np.ndarray:
    """Pick the stored data type: integers kept, integral floats in range as int16, others float32."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise LiaidsError(f"cannot write a {array.dtype} array to NIfTI", path)
    if array.size and np.isfinite(array).all():
        lo, hi = float(array.min()), float(array.max())
        if _INT16_RANGE[0] <= lo and hi <= _INT16_RANGE[1] and np.array_equal(np.rint(array), array):
            return array.astype(np.int16)  # CT in HU: half the size, exact
    return array.astype(np.float32)


def write_nifti(volume: Volume, path: str | Path, compression_level: int = 1) -> None:
    """Write a volume as NIfTI, gzip-compressed when ``path`` ends with ``.gz``.

    Integer arrays (label maps) keep their type, booleans become uint8, float arrays holding only integral
    values in the int16 range (CT in HU) are stored as int16, other floats as float32. The file appears
    atomically (written to a temporary sibling, then renamed). NIfTI stores the geometry in float32, so
    spacing and origin come back within float32 precision.

    Args:
        volume: the volume to write.
        path: destination, ending with ``.nii`` or ``.nii.gz``.
        compression_level: gzip level 0-9 (1 is fast and nearly as small as 9 for CT).

    Raises:
        LiaidsError: the name is not a NIfTI name, the data type is not numeric or writing failed.
    """
    path = Path(path)
    if not _is_nifti_name(path):
        raise LiaidsError("output name must end with .nii or .nii.gz", path)
    image = sitk.GetImageFromArray(_array_for_writing(np.asarray(volume.array), path))
    image.SetSpacing([float(v) for v in volume.spacing])
    image.SetOrigin([float(v) for v in volume.origin])
    image.SetDirection([float(v) for v in volume.direction])
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("NiftiImageIO")
        writer.SetFileName(tmp)
        writer.SetUseCompression(suffix == ".nii.gz")
        writer.SetCompressionLevel(int(compression_level))
        try:
            writer.Execute(image)
        except RuntimeError as exc:
            raise LiaidsError(f"cannot write NIfTI ({str(exc).strip().splitlines()[-1]})", path) from exc
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
