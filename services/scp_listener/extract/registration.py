"""Spatial / Deformable Spatial Registrations and Elekta XVI "RPS" Raw Data ->
``RegistrationReceived`` (domain-dicom.md s. 6.3-6.5 and s. 11)."""

from __future__ import annotations

import io
import math
import re
import zipfile
import zlib
from typing import Any

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from services.scp_listener import sop
from services.scp_listener.extract.readers import (
    first,
    get_value,
    items,
    patient,
    stamp,
    text,
)
from shared.events import (
    RegistrationItem,
    RegistrationReceived,
    SourceDevice,
    StoredObject,
    Vector3,
)

# The alignment INI is a few KB; a larger member is not one (and is not inflated).
_MAX_INI_BYTES = 256 * 1024
_COUCH_SHIFT = re.compile(r"(?im)^[ \t]*(CouchShift\w+)[ \t]*=[ \t]*([-+0-9.eE]+)[ \t]*\r?$")
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def registration_received(
    ds: Dataset, obj: StoredObject, source: SourceDevice, clinic_tz: str
) -> RegistrationReceived | None:
    """A standard or deformable registration, or an Elekta XVI "RPS" Raw Data export.
    ``None`` for Raw Data that is not a registration (stored, but no event)."""
    common: dict[str, Any] = {
        "patient": patient(ds),
        "source": source,
        "object": obj,
        "content_at": stamp(ds, "ContentDate", "ContentTime", clinic_tz),
        "creator_name": text(ds, "ContentCreatorName"),
        "label": text(ds, "ContentLabel"),
        "description": text(ds, "ContentDescription"),
        "frame_of_reference_uid": text(ds, "FrameOfReferenceUID"),
    }
    if obj.sop_class_uid == sop.RAW_DATA:
        shift = elekta_couch_shift_mm(ds)
        if shift is None:
            return None
        return RegistrationReceived(
            kind="elekta_rps",
            couch_shift_mm=shift,
            description=common.pop("description") or text(ds, "SeriesDescription"),
            **common,
        )
    index = _series_index(ds)
    if obj.sop_class_uid == sop.DEFORMABLE_REGISTRATION:
        regs = [
            RegistrationItem(
                frame_of_reference_uid=text(reg, "SourceFrameOfReferenceUID"),
                referenced_series_uids=_series_uids(reg, index),
                referenced_instance_count=len(items(reg, "ReferencedImageSequence")),
                matrix_type=text(pre, "FrameOfReferenceTransformationMatrixType"),
                matrix=_matrix(pre),
            )
            for reg in items(ds, "DeformableRegistrationSequence")
            for pre in [first(reg, "PreDeformationMatrixRegistrationSequence")]
        ]
        return RegistrationReceived(
            kind="deformable", items=tuple(regs), moving_series_uids=_moving(regs), **common
        )
    regs = []
    for reg in items(ds, "RegistrationSequence"):
        matrix_item = first(reg, "MatrixRegistrationSequence")
        matrices = items(matrix_item, "MatrixSequence")
        combined = _compose([m for mi in matrices if (m := _matrix(mi))])
        regs.append(
            RegistrationItem(
                frame_of_reference_uid=text(reg, "FrameOfReferenceUID"),
                referenced_series_uids=_series_uids(reg, index),
                referenced_instance_count=len(items(reg, "ReferencedImageSequence")),
                matrix_type=text(matrices[0], "FrameOfReferenceTransformationMatrixType")
                if matrices
                else None,
                matrix=combined,
            )
        )
    moving = next((r for r in regs if r.matrix and not _is_identity(r.matrix)), None)
    translation = rotation = None
    if moving and moving.matrix and (moving.matrix_type or "RIGID") == "RIGID":
        translation, rotation = rigid_components(moving.matrix)
    return RegistrationReceived(
        kind="rigid",
        items=tuple(regs),
        moving_series_uids=_moving(regs),
        translation_mm=translation,
        rotation_deg=rotation,
        **common,
    )


def _series_index(ds: Dataset) -> dict[str, str]:
    """Instance UID -> series UID from the Common Instance Reference module, which is where a
    registration says which series its Referenced Image Sequence instances belong to."""
    series = list(items(ds, "ReferencedSeriesSequence"))
    for study in items(ds, "StudiesContainingOtherReferencedInstancesSequence"):
        series.extend(items(study, "ReferencedSeriesSequence"))
    return {
        uid: series_uid
        for s in series
        if (series_uid := text(s, "SeriesInstanceUID"))
        for ref in items(s, "ReferencedInstanceSequence")
        if (uid := text(ref, "ReferencedSOPInstanceUID"))
    }


def _series_uids(reg: Dataset, index: dict[str, str]) -> tuple[str, ...]:
    uids = {
        index.get(text(ref, "ReferencedSOPInstanceUID") or "")
        for ref in items(reg, "ReferencedImageSequence")
    }
    uids.update(text(s, "SeriesInstanceUID") for s in items(reg, "ReferencedSeriesSequence"))
    return tuple(sorted(u for u in uids if u))


def _moving(regs: list[RegistrationItem]) -> tuple[str, ...]:
    moving = [r for r in regs if r.matrix is None or not _is_identity(r.matrix)] or regs
    return tuple(sorted({u for r in moving for u in r.referenced_series_uids}))


def _matrix(ds: Dataset | None) -> tuple[float, ...] | None:
    value = get_value(ds, "FrameOfReferenceTransformationMatrix") if ds is not None else None
    if not value or len(value) != 16:
        return None
    return tuple(float(v) for v in value)


def _compose(matrices: list[tuple[float, ...]]) -> tuple[float, ...] | None:
    # Matrix Sequence items apply in order: M = Mn x ... x M1.
    if not matrices:
        return None
    out = matrices[0]
    for m in matrices[1:]:
        out = tuple(
            sum(m[r * 4 + k] * out[k * 4 + c] for k in range(4)) for r in range(4) for c in range(4)
        )
    return out


def _is_identity(m: tuple[float, ...]) -> bool:
    return all(abs(a - b) < 1e-9 for a, b in zip(m, _IDENTITY, strict=True))


def rigid_components(m: tuple[float, ...]) -> tuple[Vector3, Vector3]:
    """Translation (mm) and rotation about x, y, z (degrees, R = Rz Ry Rx) of a rigid 4x4."""
    ry = math.degrees(math.asin(max(-1.0, min(1.0, -m[8]))))
    rx = math.degrees(math.atan2(m[9], m[10]))
    rz = math.degrees(math.atan2(m[4], m[0]))
    return (
        Vector3(x=m[3], y=m[7], z=m[11]),
        Vector3(x=round(rx, 6), y=round(ry, 6), z=round(rz, 6)),
    )


def elekta_couch_shift_mm(ds: Dataset) -> Vector3 | None:
    """Couch shift from an Elekta XVI "RPS" export: a ZIP in private (0021,xx3A) holding
    ``*.INI.XVI`` with CouchShiftLat/Long/Height in cm (domain-dicom.md s. 6.5; best effort,
    a layout we cannot read gives None and the object is only stored)."""
    block = _private_block(ds, 0x0021, "Elekta: zip file")
    if block is None:
        return None
    payload = ds.get(Tag(0x0021, (block << 8) | 0x3A))
    raw = getattr(payload, "value", None)
    if not isinstance(raw, bytes):
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            member = next(
                (i for i in zf.infolist() if i.filename.upper().endswith(".INI.XVI")), None
            )
            if member is None or member.file_size > _MAX_INI_BYTES:
                return None
            # read no more than the member says it holds (a forged size inflates no further)
            with zf.open(member) as fp:
                ini = fp.read(_MAX_INI_BYTES + 1)[:_MAX_INI_BYTES].decode("latin-1")
    except (
        # what a damaged or unusual archive raises: encrypted (RuntimeError), compressed
        # in a way zipfile lacks (NotImplementedError), a broken deflate stream (zlib.error)
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        OSError,
        EOFError,
        KeyError,
        ValueError,
        RuntimeError,
        NotImplementedError,
        zlib.error,
    ):
        return None
    # [ \t], not \s: \s* runs across line ends, and blank lines made it quadratic (a
    # 2 MB member of them took minutes)
    values = dict(_COUCH_SHIFT.findall(ini))
    keys = {k.lower(): v for k, v in values.items()}
    try:
        lat, lng, vert = (
            float(keys[k]) * 10.0 for k in ("couchshiftlat", "couchshiftlong", "couchshiftheight")
        )
    except (KeyError, ValueError):
        return None
    return Vector3(x=lat, y=lng, z=vert)


def _private_block(ds: Dataset, group: int, creator: str) -> int | None:
    for element in range(0x10, 0x100):
        elem = ds.get(Tag(group, element))
        if elem is None:
            continue
        value = elem.value.decode("latin-1") if isinstance(elem.value, bytes) else elem.value
        if str(value).strip() == creator:
            return element
    return None
