"""Decoders of the course's PNG archives and MNIST's IDX files: malformed or cut data is a DataError naming the file."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import itertools
import lzma
import multiprocessing
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 28
COURSE_NAME = re.compile(r"^(?P<id>[^/]+)_(?P<label>[^_/]*)\.png$")
DIGITS = re.compile("[0-9]+")  # not str.isdigit(), which takes characters such as '²' that int() refuses
NAMING_HINT = "expected {ID}_{label}.png with a label 0-9, e.g. 00042_7.png"


class DataError(ValueError):
    """Input data that cannot be used as it is; the message says which file to fix."""


def read_course_split(path: Path, workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A course split, a tar of PNGs or its folder, by ID; with `workers`, forked processes decode as this one reads."""
    members = _tar_members(path) if path.is_file() else _folder_members(path)
    seen: dict[str, tuple[str, int]] = {}  # ID: (member name, label), in archive order

    def pngs() -> Iterator[tuple[bytes, str]]:
        for name, read in members:
            where = f"{path}: member {name!r}"
            if not (match := COURSE_NAME.match(name.rsplit("/", 1)[-1])):
                raise DataError(f"{where} is not a labelled PNG; {NAMING_HINT}")
            if not DIGITS.fullmatch(match["label"]):
                raise DataError(f"{where} has no numeric label; {NAMING_HINT}")
            if (label := int(match["label"])) > 9:
                raise DataError(f"{where} has label {label}, outside 0-9")
            if (image_id := match["id"]) in seen:
                raise DataError(
                    f"{path}: ID {image_id!r} appears twice ({seen[image_id][0]!r} and {name!r}); IDs must be unique"
                )
            seen[image_id] = name, label
            yield read(), where

    decoded = _decode_in_chunks(pngs(), workers)
    if not seen:
        raise DataError(f"{path}: no images found; {NAMING_HINT}")
    errors = [error for _, chunk_errors in decoded for error in chunk_errors]
    ids = list(seen)  # numbers by value, before any other ID
    order = sorted(range(len(ids)), key=lambda i: (0, int(ids[i]), "") if DIGITS.fullmatch(ids[i]) else (1, 0, ids[i]))
    if first_bad := next((errors[i] for i in order if errors[i]), None):  # by ID, whichever process decoded it
        raise DataError(first_bad)
    images = np.concatenate([chunk_images for chunk_images, _ in decoded])
    return images[order], np.array([seen[ids[i]][1] for i in order], dtype=np.int64)


DECODE_CHUNK = 500  # PNGs per task: a few ms of pickling against ~40 ms of decoding
MAX_DECODE_WORKERS = 3  # the tar walk takes half a decode's time per PNG: it feeds ~2 (benchmarks/data_prep.py)


def _decode_in_chunks(pngs: Iterator[tuple[bytes, str]], workers: int) -> list[tuple[np.ndarray, list[str | None]]]:
    chunks = iter(lambda: list(itertools.islice(pngs, DECODE_CHUNK)), [])
    first = next(chunks, [])
    if workers < 1 or len(first) < DECODE_CHUNK or "fork" not in multiprocessing.get_all_start_methods():
        return [decode_pngs(chunk) for chunk in itertools.chain([first], chunks)]
    # fork, as torch's DataLoader workers do: no re-import of torch, and the workers only run PIL.
    with ProcessPoolExecutor(min(workers, MAX_DECODE_WORKERS), mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(decode_pngs, itertools.chain([first], chunks)))  # submits as the tar is read


def decode_pngs(chunk: list[tuple[bytes, str]]) -> tuple[np.ndarray, list[str | None]]:
    """The images of (png, where) pairs and, for each, why it failed or None."""
    images = np.zeros((len(chunk), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    return images, [_decode_png(png, where, into) for (png, where), into in zip(chunk, images)]


PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk, the last 12 bytes of every whole PNG


def _decode_png(png: bytes, where: str, into: np.ndarray) -> str | None:
    """Decodes `png` into `into`; why it cannot, or None."""
    try:
        with Image.open(io.BytesIO(png), formats=("PNG",)) as image:  # PNG only: probing others costs 13%
            if image.mode != "L" or image.size != (IMAGE_SIZE, IMAGE_SIZE):
                return (
                    f"{where} is a {image.size[0]}x{image.size[1]} {image.mode} image; "
                    f"expected {IMAGE_SIZE}x{IMAGE_SIZE} 8-bit grayscale (mode L)"
                )
            into[:] = np.asarray(image)
    except Exception as error:  # PIL signals corrupt data with several unrelated types
        with contextlib.suppress(Exception), Image.open(io.BytesIO(png)) as other:  # an image PIL knows?
            if other.format != "PNG":
                return f"{where} is a {other.format} image, not a PNG"
        return f"{where} does not decode as a PNG ({one_line(error)})"
    # PIL decodes a PNG cut after its pixel data without a word; only the missing IEND shows the cut.
    if not png.endswith(PNG_END) and PNG_END not in png:
        return f"{where} is a truncated PNG ({len(png)} bytes, no IEND chunk at its end)"
    return None


def one_line(error: BaseException) -> str:
    """The error's message on one line (tarfile lists every compression it tried on a line of its own)."""
    return " ".join(str(error).split())


def _tar_members(path: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """Members sliced from the archive in memory (4x extractfile()'s speed); tarfile misses cuts: ends are checked."""
    raw = _read(path)
    try:
        archive = tarfile.open(fileobj=io.BytesIO(raw), mode="r:")  # noqa: SIM115 (in memory: nothing to close)
    except tarfile.TarError as error:
        raise DataError(f"{path}: not a readable tar archive ({one_line(error)})") from None
    last = "its start"  # the last member read whole
    try:
        for member in archive:
            padded_end = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            if padded_end > len(raw):
                raise DataError(
                    f"{path}: ends inside member {member.name!r} ({max(0, len(raw) - member.offset_data)} of its "
                    f"{member.size} bytes); the file is truncated"
                )
            last = f"member {member.name!r}"
            if member.isdir():
                continue
            if not member.isfile() or member.issparse():
                raise DataError(f"{path}: member {member.name!r} is not a regular file")
            yield member.name, lambda member=member: raw[member.offset_data : member.offset_data + member.size]
    except tarfile.TarError as error:
        raise DataError(f"{path}: unreadable after {last} ({one_line(error)}); the file is corrupt") from None
    end = raw[archive.offset : archive.offset + tarfile.BLOCKSIZE]
    # One zero block suffices, as for GNU tar ("a lone zero block"): every member before it is whole.
    if end != bytes(tarfile.BLOCKSIZE):
        cut = len(end) < tarfile.BLOCKSIZE
        problem = ("ends inside a header" if end else "ends") if cut else "holds no valid tar header"
        raise DataError(
            f"{path}: {problem} after {last}, at byte {archive.offset} of {len(raw)}, "
            f"without tar's end-of-archive block; the file is {'truncated' if cut else 'corrupt'}"
        )


DECOMPRESSORS = {
    b"\x1f\x8b": ("gzip", gzip.decompress),
    b"BZh": ("bzip2", bz2.decompress),
    b"\xfd7zXZ\x00": ("xz", lzma.decompress),
}


def _read(path: Path) -> bytes:
    """The file's bytes, decompressed where they start with the magic bytes of a compression tarfile reads."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    for magic, (kind, decompress) in DECOMPRESSORS.items():
        if raw.startswith(magic):
            try:
                return decompress(raw)  # each decompressor refuses a stream that ends early
            except (EOFError, OSError, ValueError, lzma.LZMAError, zlib.error) as error:
                # All three say "... ended before the end-of-stream marker was reached" for a cut stream.
                cause = "truncated" if "ended before" in str(error) else "corrupt"
                raise DataError(f"{path}: unreadable {kind} data ({one_line(error)}); the file is {cause}") from None
    return raw


def _folder_members(path: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    for file in sorted(path.rglob("*")):
        if file.is_file():
            yield file.relative_to(path).as_posix(), file.read_bytes


def read_idx(path: Path, expected_dims: int) -> np.ndarray:
    """An MNIST IDX file (optionally gzipped; a big-endian header, then raw bytes) of `expected_dims` dimensions."""
    raw = _read(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = raw[2], raw[3]
    if dtype != 0x08 or ndim != expected_dims:
        raise DataError(
            f"{path}: IDX file of type 0x{dtype:02x} with {ndim} dimensions; expected unsigned bytes "
            f"with {expected_dims}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: ends inside its header ({len(raw)} of {header} bytes); the file is truncated")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if (size := int(np.prod(shape))) != len(raw) - header:
        raise DataError(
            f"{path}: holds {len(raw) - header} data bytes but its header announces shape {shape} "
            f"({size} bytes); the file is {'truncated' if len(raw) - header < size else 'corrupt'}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, expected_dims=3)
    labels = read_idx(labels_path, expected_dims=1).astype(np.int64)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    if len(images) == 0:
        raise DataError(f"{images_path}: holds no images")
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise DataError(f"{labels_path}: label {labels[bad]} at index {bad} is outside 0-9")
    return images.copy(), labels
