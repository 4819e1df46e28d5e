"""The two on-disk formats: course PNG archives (tar or extracted folder) and MNIST IDX files.

Good input must decode to the exact digits; bad input must stop with a DataError whose single
line names the file and the member to fix, never a traceback from PIL, tarfile or numpy.
"""

from __future__ import annotations

import gzip
import lzma
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATASET, png_bytes, write_course_split, write_tar

from mnist_exp.data import content_hash
from mnist_exp.formats import DECODE_CHUNK, DataError, read_course_split, read_idx, read_idx_split


@pytest.fixture(scope="module")
def digits(sample_digits):
    train = sample_digits["train"]
    return train.images[:24], train.labels[:24]


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_pair(folder: Path, images: np.ndarray, labels: np.ndarray, gz: bool) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, array in (("images", images), ("labels", labels)):
        data = idx_bytes(array)
        path = folder / (f"{name}.idx.gz" if gz else f"{name}.idx")
        path.write_bytes(gzip.compress(data) if gz else data)
        paths.append(path)
    return paths[0], paths[1]


def assert_one_line_naming(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message, f"message spans several lines: {message!r}"
    for part in parts:
        assert part in message, f"{part!r} missing from {message!r}"


# --- good input ---


def test_tar_decodes_every_digit_with_its_label(tmp_path, digits):
    images, labels = digits
    tar = write_course_split(tmp_path / "train.tar", "train", images, labels)

    decoded_images, decoded_labels = read_course_split(tar)

    assert decoded_images.dtype == np.uint8 and decoded_images.shape == (24, 28, 28)
    assert decoded_labels.dtype == np.int64
    np.testing.assert_array_equal(decoded_images, images)
    np.testing.assert_array_equal(decoded_labels, labels)


def test_members_are_ordered_by_numeric_id_not_by_position_or_text(tmp_path, digits):
    images, labels = digits
    ids = [10, 2, 33, 1]  # as text "10" < "2"; numerically 1 < 2 < 10 < 33
    tar = write_tar(
        tmp_path / "t.tar", [(f"train/{i}_{labels[k]}.png", png_bytes(images[k])) for k, i in enumerate(ids)]
    )

    decoded_images, decoded_labels = read_course_split(tar)

    order = np.argsort(ids)
    np.testing.assert_array_equal(decoded_images, images[:4][order])
    np.testing.assert_array_equal(decoded_labels, labels[:4][order])


def test_extracted_folder_reads_exactly_like_its_tar(tmp_path, digits):
    images, labels = digits
    tar = write_course_split(tmp_path / "train.tar", "train", images, labels)
    with tarfile.open(tar) as archive:
        archive.extractall(tmp_path / "extracted", filter="data")

    from_tar = read_course_split(tar)
    from_folder = read_course_split(tmp_path / "extracted" / "train")

    np.testing.assert_array_equal(from_folder[0], from_tar[0])
    np.testing.assert_array_equal(from_folder[1], from_tar[1])


# --- the parallel decode: more than one chunk of PNGs, decoded in forked processes ---


@pytest.fixture(scope="module")
def many_members(sample_digits):
    """(name, png) for 2.6 chunks of real digits, IDs shuffled so archive order is not ID order."""
    n = int(DECODE_CHUNK * 2.6)
    images, labels = sample_digits["train"].images[:n], sample_digits["train"].labels[:n]
    ids = np.random.default_rng(0).permutation(n)
    members = [(f"train/{ids[k]:05d}_{labels[k]}.png", png_bytes(images[k])) for k in range(n)]
    by_id = np.argsort(ids)
    return members, images[by_id], labels[by_id]


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_decode_with_any_number_of_workers_gives_the_same_arrays(tmp_path, many_members, workers):
    members, images, labels = many_members
    tar = write_tar(tmp_path / "train.tar", members)

    decoded_images, decoded_labels = read_course_split(tar, workers=workers)

    np.testing.assert_array_equal(decoded_images, images)
    np.testing.assert_array_equal(decoded_labels, labels)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_first_bad_png_by_id_is_reported_whichever_chunk_holds_it(tmp_path, many_members, workers):
    members = list(many_members[0])
    late, early = len(members) - 3, 4  # positions in the archive: different chunks
    members[late] = ("train/99998_3.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    members[early] = ("train/99999_3.png", b"not a png")
    tar = write_tar(tmp_path / "train.tar", members)

    with pytest.raises(DataError) as error:
        read_course_split(tar, workers=workers)

    assert_one_line_naming(error, str(tar), "'train/99998_3.png'", "does not decode")


def test_a_bad_name_after_the_first_chunk_stops_the_parallel_decode(tmp_path, many_members):
    members = list(many_members[0])
    members[DECODE_CHUNK + 7] = ("train/12345.png", members[0][1])
    tar = write_tar(tmp_path / "train.tar", members)

    with pytest.raises(DataError) as error:
        read_course_split(tar, workers=2)

    assert_one_line_naming(error, str(tar), "'train/12345.png'", "not a labelled PNG")


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_idx_files_decode_to_the_digits(tmp_path, digits, gz):
    images, labels = digits
    images_path, labels_path = write_idx_pair(tmp_path, images, labels, gz)

    decoded_images, decoded_labels = read_idx_split(images_path, labels_path)

    assert decoded_images.flags.writeable  # a copy, not a view of a read-only buffer
    np.testing.assert_array_equal(decoded_images, images)
    np.testing.assert_array_equal(decoded_labels, labels)
    assert decoded_labels.dtype == np.int64


def test_tar_folder_and_idx_of_the_same_digits_share_arrays_and_content_hash(tmp_path, digits):
    images, labels = digits
    tar = write_course_split(tmp_path / "train.tar", "train", images, labels)
    with tarfile.open(tar) as archive:
        archive.extractall(tmp_path / "extracted", filter="data")
    decoded = {
        "tar": read_course_split(tar),
        "folder": read_course_split(tmp_path / "extracted" / "train"),
        "idx": read_idx_split(*write_idx_pair(tmp_path / "idx", images, labels, gz=True)),
    }

    hashes = {name: content_hash(*arrays) for name, arrays in decoded.items()}

    assert len(set(hashes.values())) == 1, hashes
    # The hash must depend on the content, or it would prove nothing about provenance.
    relabelled = labels.copy()
    relabelled[0] = (relabelled[0] + 1) % 10
    assert content_hash(images, relabelled) != hashes["tar"]


def test_shared_course_tars_hold_the_same_digits_as_the_shipped_idx_sample(sample_digits):
    if not SHARED_DATASET.is_dir():
        pytest.skip(f"{SHARED_DATASET} is not on this machine")
    for split in ("train", "test"):
        images, labels = read_course_split(SHARED_DATASET / f"{split}.tar")
        expected = sample_digits[split]
        assert content_hash(images, labels) == content_hash(expected.images, expected.labels), split


# --- bad course input: each names the archive and the member ---


def _rgb(image: np.ndarray) -> bytes:
    return png_bytes(np.stack([image] * 3, axis=-1), mode="RGB")


BAD_MEMBERS = {
    # id: (member name, payload builder taking a good 28x28 digit, text the message must contain)
    "name without a label": ("train/00007.png", png_bytes, "not a labelled PNG"),
    "empty label": ("train/00007_.png", png_bytes, "no numeric label"),
    "non-numeric label": ("train/00007_seven.png", png_bytes, "no numeric label"),
    "non-ascii digit label": ("train/00007_\u00b2.png", png_bytes, "no numeric label"),
    "label above 9": ("train/00007_12.png", png_bytes, "outside 0-9"),
    "not a png at all": ("train/00007_3.png", lambda image: b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "does not decode"),
    "truncated png": ("train/00007_3.png", lambda image: png_bytes(image)[:60], "does not decode"),
    "jpeg named .png": ("train/00007_3.png", lambda image: png_bytes(image, format="JPEG"), "JPEG image, not a PNG"),
    "not 28x28": ("train/00007_3.png", lambda image: png_bytes(image[:, :27]), "27x28"),
    "rgb, not grayscale": ("train/00007_3.png", _rgb, "RGB"),
    "non-png member": ("train/README.txt", lambda image: b"notes\n", "not a labelled PNG"),
}


@pytest.mark.parametrize("case", BAD_MEMBERS, ids=list(BAD_MEMBERS))
def test_bad_member_raises_data_error_naming_archive_and_member(tmp_path, digits, case):
    name, payload, reason = BAD_MEMBERS[case]
    images, labels = digits
    good = [(f"train/{i:05d}_{labels[i]}.png", png_bytes(images[i])) for i in range(3)]
    tar = write_tar(tmp_path / "train.tar", [*good, (name, payload(images[3]))])

    with pytest.raises(DataError) as error:
        read_course_split(tar)

    assert_one_line_naming(error, str(tar), repr(name), reason)


def test_bad_file_in_an_extracted_folder_is_named_too(tmp_path, digits):
    images, labels = digits
    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "00000_5.png").write_bytes(png_bytes(images[0]))
    (folder / "00001_x.png").write_bytes(png_bytes(images[1]))

    with pytest.raises(DataError) as error:
        read_course_split(folder)

    assert_one_line_naming(error, str(folder), "'00001_x.png'", "no numeric label")


def test_duplicate_ids_name_both_members(tmp_path, digits):
    images, _ = digits
    tar = write_tar(
        tmp_path / "train.tar",
        [("train/00001_3.png", png_bytes(images[0])), ("train/00001_5.png", png_bytes(images[1]))],
    )

    with pytest.raises(DataError) as error:
        read_course_split(tar)

    assert_one_line_naming(error, str(tar), "'train/00001_3.png'", "'train/00001_5.png'", "twice")


def test_symlink_member_is_refused(tmp_path, digits):
    images, labels = digits
    tar = write_tar(tmp_path / "train.tar", [("train/00000_5.png", png_bytes(images[0]))])
    with tarfile.open(tar, "a") as archive:
        link = tarfile.TarInfo("train/00001_5.png")
        link.type, link.linkname = tarfile.SYMTYPE, "00000_5.png"
        archive.addfile(link)

    with pytest.raises(DataError) as error:
        read_course_split(tar)

    assert_one_line_naming(error, str(tar), "'train/00001_5.png'", "not a regular file")


def test_sparse_member_is_refused(tmp_path, digits):
    images, _ = digits
    sparse = tarfile.TarInfo("train/00001_5.png")
    sparse.type = tarfile.GNUTYPE_SPARSE  # its data is not stored where a plain member's is
    with tarfile.open(tmp_path / "train.tar", "w", format=tarfile.GNU_FORMAT) as archive:
        archive.addfile(sparse)

    with pytest.raises(DataError) as error:
        read_course_split(tmp_path / "train.tar")

    assert_one_line_naming(error, "'train/00001_5.png'", "not a regular file")


@pytest.mark.parametrize("compression", ["gz", "xz"])
def test_compressed_tar_reads_like_the_plain_one(tmp_path, digits, compression):
    images, labels = digits
    plain = write_course_split(tmp_path / "plain.tar", "train", images, labels)
    compressed = tmp_path / "train.tar"  # the course's name, whatever the content
    with tarfile.open(plain) as source, tarfile.open(compressed, f"w:{compression}") as target:
        for member in source:
            target.addfile(member, source.extractfile(member))

    decoded_images, decoded_labels = read_course_split(compressed)

    np.testing.assert_array_equal(decoded_images, images)
    np.testing.assert_array_equal(decoded_labels, labels)


# --- archives that end early or do not add up: refused, never read as a subset ---


def tar_offsets(tar: Path, index: int) -> tuple[int, int, int]:
    """(header offset, data offset, end of padded data) of the archive's `index`-th member."""
    with tarfile.open(tar) as archive:
        member = archive.getmembers()[index]
        return member.offset, member.offset_data, member.offset_data + -(-member.size // 512) * 512


CUTS = {  # where `head -c N` ends the archive: in the 10th member, or in the zero block after the last one
    "at a member boundary": lambda tar: tar_offsets(tar, 10)[0],
    "inside a header": lambda tar: tar_offsets(tar, 10)[0] + 100,
    "inside a member's data": lambda tar: tar_offsets(tar, 10)[1] + 50,
    "inside the end-of-archive block": lambda tar: tar_offsets(tar, -1)[2] + 100,
}


@pytest.mark.parametrize("cut", CUTS)
def test_a_truncated_tar_is_refused_naming_the_file_and_the_last_whole_member(tmp_path, digits, cut):
    whole = write_course_split(tmp_path / "whole.tar", "train", *digits)
    tar = tmp_path / "train.tar"
    tar.write_bytes(whole.read_bytes()[: CUTS[cut](whole)])

    with pytest.raises(DataError) as error:
        read_course_split(tar, workers=2)

    assert_one_line_naming(error, str(tar), "truncated", "train/000")


@pytest.mark.parametrize("compression", ["gz", "xz"])
def test_a_truncated_compressed_tar_is_refused(tmp_path, digits, compression):
    plain = write_course_split(tmp_path / "plain.tar", "train", *digits)
    compress = {"gz": gzip.compress, "xz": lzma.compress}[compression]
    tar = tmp_path / "train.tar"
    tar.write_bytes(compress(plain.read_bytes())[:-100])

    with pytest.raises(DataError) as error:
        read_course_split(tar)

    assert_one_line_naming(error, str(tar), "truncated")


def test_a_garbled_header_midway_is_refused_not_read_as_the_end(tmp_path, digits):
    tar = write_course_split(tmp_path / "train.tar", "train", *digits)
    header = tar_offsets(tar, 10)[0]
    raw = bytearray(tar.read_bytes())
    raw[header : header + 512] = b"x" * 512
    tar.write_bytes(bytes(raw))

    with pytest.raises(DataError) as error:
        read_course_split(tar)

    assert_one_line_naming(error, str(tar), "'train/00009_", "no valid tar header", "corrupt")


@pytest.mark.parametrize("layout", ["archive", "folder"])
def test_a_png_cut_before_its_iend_chunk_is_refused_though_pil_decodes_it(tmp_path, digits, layout):
    images, labels = digits
    members = [(f"train/{i:05d}_{label}.png", png_bytes(image)) for i, (image, label) in enumerate(zip(images, labels))]
    members[5] = (members[5][0], members[5][1][:-12])  # the tar's sizes add up; the PNG itself is cut
    if layout == "archive":
        source = write_tar(tmp_path / "train.tar", members)
    else:
        source = tmp_path / "train"
        for name, data in members:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(data)

    with pytest.raises(DataError) as error:
        read_course_split(source)

    assert_one_line_naming(error, str(source), "00005_", "truncated PNG")


def test_empty_file_is_not_a_readable_tar(tmp_path):
    tar = tmp_path / "train.tar"
    tar.write_bytes(b"")

    with pytest.raises(DataError) as error:
        read_course_split(tar)

    assert_one_line_naming(error, str(tar), "not a readable tar")


def test_tar_without_members_holds_no_images(tmp_path):
    tar = write_tar(tmp_path / "train.tar", [])
    assert tar.stat().st_size > 0  # a valid, non-empty archive with nothing in it

    with pytest.raises(DataError) as error:
        read_course_split(tar)

    assert_one_line_naming(error, str(tar), "no images found")


def test_folder_of_only_subfolders_holds_no_images(tmp_path):
    (tmp_path / "train" / "nested").mkdir(parents=True)

    with pytest.raises(DataError) as error:
        read_course_split(tmp_path / "train")

    assert_one_line_naming(error, "no images found")


@pytest.mark.parametrize("name", ["train.tar", "train"], ids=["archive", "folder"])
def test_missing_archive_or_folder_is_named(tmp_path, name):
    missing = tmp_path / name

    with pytest.raises(DataError) as error:
        read_course_split(missing)

    assert_one_line_naming(error, str(missing), "no such file or folder")


# --- bad IDX input ---


def test_idx_with_bad_magic_number(tmp_path, digits):
    images, _ = digits
    path = tmp_path / "images.idx"
    path.write_bytes(b"\x12\x34" + idx_bytes(images)[2:])

    with pytest.raises(DataError) as error:
        read_idx(path, expected_dims=3)

    assert_one_line_naming(error, str(path), "bad magic")


def test_idx_of_the_wrong_kind_is_refused(tmp_path, digits):
    _, labels = digits
    path = tmp_path / "labels.idx"
    path.write_bytes(idx_bytes(labels))

    with pytest.raises(DataError) as error:
        read_idx(path, expected_dims=3)  # a labels file where images are expected

    assert_one_line_naming(error, str(path), "1 dimensions", "expected unsigned bytes with 3")


@pytest.mark.parametrize("keep", [4 + 12 + 28 * 28 * 5 + 100, 9], ids=["inside the data", "inside the header"])
def test_truncated_idx_file(tmp_path, digits, keep):
    images, _ = digits
    path = tmp_path / "images.idx"
    path.write_bytes(idx_bytes(images)[:keep])

    with pytest.raises(DataError) as error:
        read_idx(path, expected_dims=3)

    assert_one_line_naming(error, str(path), "truncated")


def test_truncated_gzip_is_a_data_error(tmp_path, digits):
    images, _ = digits
    path = tmp_path / "images.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(images))[:200])

    with pytest.raises(DataError) as error:
        read_idx(path, expected_dims=3)

    assert_one_line_naming(error, str(path), "gzip", "truncated")


def test_idx_image_and_label_counts_must_match(tmp_path, digits):
    images, labels = digits
    images_path, labels_path = write_idx_pair(tmp_path, images, labels[:-1], gz=False)

    with pytest.raises(DataError) as error:
        read_idx_split(images_path, labels_path)

    assert_one_line_naming(error, str(images_path), str(labels_path), "24 images", "23 labels")


def test_idx_label_above_9_names_its_index(tmp_path, digits):
    images, labels = digits
    labels = labels.copy()
    labels[17] = 11
    images_path, labels_path = write_idx_pair(tmp_path, images, labels, gz=True)

    with pytest.raises(DataError) as error:
        read_idx_split(images_path, labels_path)

    assert_one_line_naming(error, str(labels_path), "label 11 at index 17", "outside 0-9")


def test_idx_images_must_be_28x28(tmp_path, digits):
    images, labels = digits
    images_path, labels_path = write_idx_pair(tmp_path, images[:, :27, :], labels, gz=False)

    with pytest.raises(DataError) as error:
        read_idx_split(images_path, labels_path)

    assert_one_line_naming(error, str(images_path), "27x28")


def test_idx_without_images(tmp_path):
    images_path, labels_path = write_idx_pair(
        tmp_path, np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8), gz=False
    )

    with pytest.raises(DataError) as error:
        read_idx_split(images_path, labels_path)

    assert_one_line_naming(error, str(images_path), "no images")
