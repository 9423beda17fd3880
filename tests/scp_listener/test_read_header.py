"""read_header: the SCP's check that a received object is complete and decodable."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from services.scp_listener.extract import Undecodable, read_header, readers
from tests import dicom_factories as f
from tests.support import TEST_DATA


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("samples")
    return {
        "ct": f.write_series(f.cbct_series(n_slices=1, rows=256, columns=256), d)[0],
        "record": f.write(f.treatment_record(plan_uid="1.2.3"), d / "rec.dcm"),
        "plan": f.write(f.rt_plan(), d / "plan.dcm"),
    }


def test_pixel_data_is_not_read(samples: dict[str, Path]) -> None:
    ds = read_header(samples["ct"])
    # A deferred value stays a RawDataElement without a value: never held in memory.
    assert ds._dict[0x7FE00010].value is None
    assert ds.Rows == 256


@pytest.mark.parametrize("kind", ["ct", "record", "plan"])
# Cuts inside an element; a cut exactly between two top-level elements is undetectable
# (DICOM carries no total length), see check_complete.
@pytest.mark.parametrize("keep", [0.23, 0.5, 0.8, 0.95, 0.999])
def test_truncated_objects_are_refused(
    samples: dict[str, Path], tmp_path: Path, kind: str, keep: float
) -> None:
    cut = f.truncated_copy(samples[kind], tmp_path / "cut.dcm", keep_fraction=keep)
    with pytest.raises(Undecodable):
        read_header(cut)


def test_trailing_bytes_are_refused(samples: dict[str, Path], tmp_path: Path) -> None:
    padded = tmp_path / "padded.dcm"
    padded.write_bytes(samples["record"].read_bytes() + b"\x00\x00\x00")
    with pytest.raises(Undecodable, match="trailing"):
        read_header(padded)


@pytest.mark.parametrize("kind", ["unterminated_sequence", "overrun", "random"])
@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_garbage_is_refused(tmp_path: Path, kind: str) -> None:
    with pytest.raises(Undecodable):
        read_header(f.garbage_dicom(tmp_path / "g.dcm", kind=kind))  # type: ignore[arg-type]


def test_reference_samples_with_file_meta_are_complete() -> None:
    files = [p for p in TEST_DATA.rglob("*.dcm") if p.read_bytes()[128:132] == b"DICM"]
    assert len(files) >= 9
    for path in files:
        read_header(path)


def _encapsulated_slice(folder: Path) -> Path:
    """A CT slice in JPEG Baseline: one fragment of stand-in bytes (nothing decodes pixels)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = f.cbct_series(n_slices=1, rows=64, columns=64, transfer_syntax_uid=JPEGBaseline8Bit)[0]
    del ds[0x7FE00010]
    # 512 KiB: past DEFER_BYTES, so pydicom skips it unread
    ds.add_new(0x7FE00010, "OB", encapsulate([bytes(range(256)) * 2048]))
    ds[0x7FE00010].is_undefined_length = True  # PS3.5 A.4
    return f.write(ds, folder / "jpeg.dcm")


def test_an_encapsulated_image_is_complete(tmp_path: Path) -> None:
    """Its Pixel Data has an undefined length that pydicom skips without keeping its extent:
    that is not the end of the data set (every JPEG/RLE image was refused with 0xC210)."""
    ds = read_header(_encapsulated_slice(tmp_path))
    assert ds.Rows == 64


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_an_encapsulated_image_cut_inside_its_fragments_is_refused(
    tmp_path: Path, keep: float
) -> None:
    cut = f.truncated_copy(_encapsulated_slice(tmp_path), tmp_path / "cut.dcm", keep_fraction=keep)
    with pytest.raises(Undecodable):
        read_header(cut)


# ------------------------------------------------ the walk's data set is pydicom's


def _described(ds: Dataset) -> list[object]:
    """Every element as read: a raw one's fields, a decoded sequence's items in turn."""
    out: list[object] = []
    for tag, elem in ds._dict.items():
        if isinstance(elem, RawDataElement):
            out.append(tuple(elem))
        elif elem.VR == "SQ":
            out.append((tag, elem.is_undefined_length, [_described(i) for i in elem.value]))
        else:
            out.append((tag, elem.VR, elem.value, elem.is_undefined_length))
    return out


def _outcome(path: Path) -> object:
    try:
        ds = read_header(path)
    except Undecodable:
        return "refused"
    return (
        _described(ds),
        [(tag, ds.file_meta[tag].VR, ds.file_meta[tag].value) for tag in ds.file_meta._dict],
        ds.preamble,
        ds.original_encoding,
        ds.original_character_set,
        ds.filename,
        ds.is_little_endian,
        ds.is_implicit_VR,
    )


def _samples(folder: Path) -> list[Path]:
    """Real files, every shape of the factories, the fuzz corpus, and mutations of it."""
    from tests.fuzz.harness import CORPUS, TRANSFER_SYNTAXES, decode_input, spool_bytes
    from tests.fuzz.mutator import _mutate_structure

    paths = [p for p in TEST_DATA.rglob("*.dcm") if p.read_bytes()[128:132] == b"DICM"]
    paths.append(_encapsulated_slice(folder))
    paths += f.write_series(f.cbct_series(n_slices=1, rows=300, columns=300), folder)
    paths.append(f.write(f.rt_plan(), folder / "plan.dcm"))
    for n, seed in enumerate(sorted(CORPUS.iterdir())):
        klass, syntax, original = decode_input(seed.read_bytes())
        implicit = syntax == TRANSFER_SYNTAXES[1]
        order = ">" if syntax == TRANSFER_SYNTAXES[2] else "<"
        for k in range(25):
            rng = random.Random(n * 1000 + k)
            body = original
            for _ in range(k and rng.choice((1, 1, 2, 3))):  # the fuzzer's structure edits
                body = _mutate_structure(body, rng, implicit, order)
            if k % 7 == 6:  # cut short
                body = body[: rng.randrange(len(body) + 1)]
            path = folder / f"{seed.name}-{k}.dcm"
            path.write_bytes(spool_bytes(body, klass, syntax))
            paths.append(path)
    return paths


@pytest.mark.filterwarnings("ignore")
def test_the_data_set_built_from_the_walk_is_the_one_pydicom_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """read_header builds the data set from the elements its structure walk read; pydicom's
    own reading (``_build`` declining) must give the same elements, values, offsets and
    encodings, or refuse the same objects."""
    paths = _samples(tmp_path)
    built = {p: _outcome(p) for p in paths}
    monkeypatch.setattr(readers, "_build", lambda fp, layout: None)
    differ = [p.name for p in paths if _outcome(p) != built[p]]
    assert not differ, differ[:10]
    stored = sum(1 for outcome in built.values() if outcome != "refused")
    assert stored > 100 and len(paths) - stored > 100  # both kinds well represented


@pytest.mark.parametrize("private_bytes", [0, 1000, 1026, 4000])
def test_a_file_meta_element_longer_than_the_walk_reads_is_skipped_to_the_right_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_bytes: int
) -> None:
    """The File Meta walk counts its own position (a tell() per element was an lseek each):
    a meta element it skips (over 1024 bytes) or reads must leave it where pydicom is, or the
    data set would be read from the wrong byte."""
    ds = f.cbct_series(n_slices=1, rows=64, columns=64)[0]
    ds.file_meta.PrivateInformationCreatorUID = "1.2.826.0.1.3680043.8.498.1"
    if private_bytes:
        ds.file_meta.PrivateInformation = b"\x01" * private_bytes
    path = f.write(ds, tmp_path / "private-meta.dcm")
    built = _outcome(path)
    assert built != "refused"
    assert read_header(path).SOPInstanceUID == ds.SOPInstanceUID
    monkeypatch.setattr(readers, "_build", lambda fp, layout: None)
    assert _outcome(path) == built


def test_get_value_reads_what_pydicom_s_get_reads(samples: dict[str, Path]) -> None:
    """readers.get_value reads through the tag (not Dataset.get's attribute lookup): the same
    value for every element of real and synthetic objects, nested items included, and None
    for a keyword the object lacks or that is no keyword at all."""
    from pydicom.datadict import keyword_for_tag

    paths = [*samples.values(), *sorted(TEST_DATA.rglob("*.dcm"))[:40]]
    checked = 0
    for path in paths:
        try:
            ours, theirs = read_header(path), read_header(path)
        except Undecodable:
            continue
        pending = [(ours, theirs)]
        while pending:
            a, b = pending.pop()
            for tag in list(b._dict):
                keyword = keyword_for_tag(tag)
                if not keyword or tag == 0x7FE00010:  # Pixel Data: a deferred read
                    continue
                try:
                    expected = b.get(keyword)
                except Exception as exc:  # then ours fails too
                    with pytest.raises((readers.MalformedObject, type(exc))):
                        readers.get_value(a, keyword)
                    continue
                value = readers.get_value(a, keyword)
                assert value == expected, (path.name, keyword)
                checked += 1
                if b[tag].VR == "SQ":
                    pending += list(zip(value, expected, strict=True))
        absent = next(k for k in ("PatientSize", "PatientWeight", "Occupation") if k not in ours)
        assert readers.get_value(ours, absent) is None
        assert readers.get_value(ours, "NotAKeywordAtAll") is None
    assert checked > 1000
