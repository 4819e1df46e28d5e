"""MNIST for training: find the digits, decode each split once, then serve it from a verified cache."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mnist_exp.formats import DataError, one_line, read_course_split, read_idx_split

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
SOURCES = ("auto", "course", "idx", "download", "sample")
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "data" / "mnist-10k"  # shipped; its README credits it
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_FOLDERS = (".", "MNIST/raw", "idx")  # torchvision's download lands in MNIST/raw
IDX_HINT = f"{', '.join(sum(IDX_NAMES.values(), ()))} (optionally .gz) in it, in MNIST/raw/ or in idx/"
CACHE_FORMAT = 1  # bump when the decoded layout changes, so old cache files are ignored
DOWNLOAD_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # torchvision's first MNIST mirror


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 [N, 28, 28], raw pixels
    labels: torch.Tensor  # int64 [N]
    sha256: str  # content hash of images and labels: identical for a tar and its IDX twin

    def __len__(self) -> int:
        return len(self.labels)

    def part(self, start: int, stop: int | None) -> Split:
        """Images [start, stop), hashed on their own: a run logs the hash of exactly what it used."""
        if start == 0 and (stop is None or stop >= len(self)):
            return self
        images, labels = self.images[start:stop].clone(), self.labels[start:stop].clone()
        return Split(images, labels, content_hash(images.numpy(), labels.numpy()))


@dataclass(frozen=True)
class Located:
    source: str  # course | idx | download | sample
    location: Path  # where it was found
    files: dict[str, tuple[Path, ...]]  # the files that make up each split


@dataclass(frozen=True)
class MNIST:
    train: Split
    test: Split
    validation: Split | None  # held out from the training images (data.validation_size), for tuning
    source: str
    location: str
    name: str  # a short name for the data set: its folder's, or mnist-10k for the sample
    url: str | None  # where a download came from
    fallback: str | None  # why data.source=auto fell back to the offline sample


def load_mnist(data_cfg) -> MNIST:
    """Both splits as configured by the `data` config group."""
    located, fallback = locate(Path(data_cfg.root), data_cfg.source)
    train = load_split(located, "train", Path(data_cfg.cache_dir)).part(0, data_cfg.limit_train)
    test = load_split(located, "test", Path(data_cfg.cache_dir)).part(0, data_cfg.limit_test)
    if (keep := len(train) - data_cfg.validation_size) < 1:
        raise DataError(
            f"data.validation_size={data_cfg.validation_size} leaves no training images "
            f"(the training split has {len(train)})"
        )
    train, validation = train.part(0, keep), (train.part(keep, None) if data_cfg.validation_size else None)
    name = SAMPLE_DIR.name if located.source == "sample" else Path(data_cfg.root).resolve().name
    url = DOWNLOAD_URL if located.source == "download" else None
    return MNIST(train, test, validation, located.source, str(located.location), name, url, fallback)


def normalization(data_cfg, train: Split) -> tuple[float, float]:
    """The (mean, std) inputs are normalized with: data.mean and data.std, each null one the training split's own."""
    given = data_cfg.mean, data_cfg.std
    measured = pixel_statistics(train) if None in given else given
    return tuple(own if value is None else value for value, own in zip(given, measured))


def pixel_statistics(split: Split) -> tuple[float, float]:
    """Mean and population std of a split's pixels in [0, 1], from their histogram: float64, no float copy of them."""
    counts = torch.bincount(split.images.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = (counts @ values) / counts.sum()
    variance = (counts @ (values - mean) ** 2) / counts.sum()
    return mean.item(), variance.sqrt().item()


def locate(root: Path, source: str) -> tuple[Located, str | None]:
    root = root.expanduser().resolve()
    explicit = {
        "sample": lambda: replace(_find_idx(SAMPLE_DIR), source="sample"),
        "course": lambda: _require(_find_course(root), root, "train.tar and test.tar, or train/ and test/ folders"),
        "idx": lambda: _require(_find_idx(root), root, IDX_HINT),
        "download": lambda: _download(root),
    }
    if source != "auto":
        return explicit[source](), None
    if found := _find_course(root) or _find_idx(root):
        return found, None
    try:
        return _download(root), None
    except DataError as error:
        reason = f"no MNIST under data.root={root} and {error}"
    log.warning(
        "\n" + "!" * 78 + "\n"
        f"!! FALLING BACK TO THE OFFLINE SAMPLE {SAMPLE_DIR}\n"
        "!! (8,000 train / 2,000 test real digits, not full MNIST).\n"
        f"!! Why: {reason}\n"
        "!! Point data.root at your data, or set data.source=sample to silence this.\n" + "!" * 78
    )
    return explicit["sample"](), reason


def _require(found: Located | None, root: Path, wanted: str) -> Located:
    if found is None:
        raise DataError(f"data.root={root} {'holds none' if root.exists() else 'does not exist'}: expected {wanted}")
    return found


def _find_course(root: Path) -> Located | None:
    for paths in ({s: root / f"{s}.tar" for s in SPLITS}, {s: root / s for s in SPLITS}):  # tars, then folders
        present = {split: path for split, path in paths.items() if path.exists()}
        if len(present) == len(SPLITS):
            return Located("course", root, {split: (path,) for split, path in present.items()})
        if present:
            missing = [str(paths[s]) for s in SPLITS if s not in present]
            raise DataError(f"found {', '.join(map(str, present.values()))} but not {', '.join(missing)}")
    return None


def _find_idx(root: Path) -> Located | None:
    for folder in IDX_FOLDERS:
        files = {split: tuple(root / folder / name for name in names) for split, names in IDX_NAMES.items()}
        files = {split: tuple(p if p.is_file() else p.with_suffix(".gz") for p in ps) for split, ps in files.items()}
        if all(path.is_file() for paths in files.values() for path in paths):
            return Located("idx", (root / folder).resolve(), files)
    return None


def _download(root: Path) -> Located:
    """Full MNIST through torchvision, into data.root/MNIST/raw."""
    from torchvision.datasets import MNIST as TorchvisionMNIST

    log.info("downloading MNIST into %s", root)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # seconds; torchvision sets none, and offline must fail, not hang
    try:
        TorchvisionMNIST(root=str(root), train=True, download=True)
    except Exception as error:  # network, disk and checksum failures all end the attempt
        raise DataError(f"downloading MNIST into {root} failed ({one_line(error)[:300]})") from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return replace(_require(_find_idx(root), root, IDX_HINT), source="download")


def load_split(located: Located, split: str, cache_dir: Path) -> Split:
    """Decode a split, or read it from the cache when its source files have not changed."""
    files = located.files[split]
    cache_file = cache_dir / f"{located.source}-{split}-{_fingerprint(files)}.pt"
    if cache_file.exists():
        try:
            cached = Split(**torch.load(cache_file, weights_only=True))
            if content_hash(cached.images.numpy(), cached.labels.numpy()) == cached.sha256:
                return cached
            raise ValueError("content does not match its recorded hash")
        except Exception as error:  # truncated, tampered with or from another version: never trusted
            log.warning("cache file %s is unusable (%s); decoding the source again", cache_file, error)
    images, labels = (  # a course split's one tar or folder, decoded by as many processes as the run has cores
        read_course_split(files[0], workers=torch.get_num_threads()) if len(files) == 1 else read_idx_split(*files)
    )
    result = Split(torch.from_numpy(images), torch.from_numpy(labels), content_hash(images, labels))
    try:
        save_atomically(vars(result), cache_file)  # images, labels, sha256
    except (OSError, RuntimeError) as error:  # torch.save reports a failed write as RuntimeError
        log.warning("cannot write the data cache %s (%s); continuing without it", cache_file, error)
    log.info("decoded %s split: %d images from %s", split, len(result), ", ".join(map(str, files)))
    return result


def content_hash(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).data)
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).data)
    return digest.hexdigest()


def _fingerprint(files: tuple[Path, ...]) -> str:
    """Identifies the source files' current state (paths, sizes, modification times)."""
    digest = hashlib.sha256(f"format {CACHE_FORMAT}".encode())
    for path in files:
        stats = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for item in stats:
            stat = item.stat()
            digest.update(f"{item.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def save_atomically(payload, path: Path) -> None:
    """torch.save via this process's own temporary file, synced, then renamed: a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())  # the rename must never point at data still in flight
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)  # what a failed write left; nothing once renamed
