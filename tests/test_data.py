"""Finding the digits (data.source) and the verified decode cache, through the real `data` config."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import tarfile

import numpy as np
import pytest
import torch
from conftest import job_runs, run_script, write_course_split

from mnist_exp import record
from mnist_exp.data import SAMPLE_DIR, content_hash, load_mnist, locate, normalization, pixel_statistics
from mnist_exp.formats import DataError
from mnist_exp.validation import ConfigError, validate

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def copy_sample_idx(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        shutil.copy(SAMPLE_DIR / name, folder / name)
    return folder


@pytest.fixture
def data_cfg(compose, tmp_path):
    """data_cfg(root, *overrides): the composed `data` node, with a cache private to this test."""

    def _cfg(root, *overrides):
        return compose([f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", *overrides]).data

    return _cfg


def cache_files(cache_dir, split):
    return sorted(cache_dir.glob(f"*-{split}-*.pt"))


def decoded_messages(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("decoded ")]


# --- locate: which source data.source=auto picks ---


def test_auto_prefers_course_tars_over_idx_files(tmp_path, make_course_dataset):
    make_course_dataset(tmp_path, 20, 10)
    copy_sample_idx(tmp_path / "MNIST" / "raw")

    located, fallback = locate(tmp_path, "auto")

    assert located.source == "course" and fallback is None
    assert located.files == {"train": (tmp_path / "train.tar",), "test": (tmp_path / "test.tar",)}


def test_auto_finds_extracted_course_folders(tmp_path, make_course_dataset):
    make_course_dataset(tmp_path / "tars", 20, 10)
    for split in ("train", "test"):
        with tarfile.open(tmp_path / "tars" / f"{split}.tar") as archive:
            archive.extractall(tmp_path / "root", filter="data")

    located, _ = locate(tmp_path / "root", "auto")

    assert located.source == "course"
    assert located.files["train"] == (tmp_path / "root" / "train",)


@pytest.mark.parametrize("folder", [".", "MNIST/raw", "idx"])
def test_auto_uses_idx_files_when_there_is_no_course_data(tmp_path, folder):
    copy_sample_idx(tmp_path / folder)

    located, fallback = locate(tmp_path, "auto")

    assert located.source == "idx" and fallback is None
    assert located.location == (tmp_path / folder).resolve()


def test_half_a_course_dataset_is_an_error_not_a_silent_fallback(tmp_path, sample_digits):
    digits = sample_digits["train"]
    write_course_split(tmp_path / "train.tar", "train", digits.images[:5], digits.labels[:5])
    copy_sample_idx(tmp_path)  # would be usable, but the user clearly meant the tars

    with pytest.raises(DataError, match=r"train\.tar but not .*test\.tar"):
        locate(tmp_path, "auto")


def test_auto_falls_back_to_the_sample_loudly_when_nothing_is_found_and_download_fails(unreachable_root, caplog):
    with caplog.at_level(logging.WARNING, logger="mnist_exp.data"):
        located, fallback = locate(unreachable_root, "auto")

    assert located.source == "sample"
    assert located.location == SAMPLE_DIR
    assert f"data.root={unreachable_root}" in fallback and "downloading MNIST" in fallback and "failed" in fallback
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("FALLING BACK TO THE OFFLINE SAMPLE" in w and fallback in w for w in warnings)


def test_fallback_reason_reaches_the_loaded_dataset(unreachable_root, data_cfg):
    data = load_mnist(data_cfg(unreachable_root))

    assert data.source == "sample" and data.fallback
    assert (len(data.train), len(data.test)) == (8000, 2000)  # the whole shipped sample


# --- explicit sources ---


def test_explicit_course_source(course_dataset):
    located, fallback = locate(course_dataset.root, "course")
    assert located.source == "course" and fallback is None


def test_explicit_idx_source_ignores_course_tars(tmp_path, make_course_dataset):
    make_course_dataset(tmp_path, 20, 10)
    copy_sample_idx(tmp_path / "idx")

    located, _ = locate(tmp_path, "idx")

    assert located.source == "idx"


def test_explicit_sample_source_ignores_data_root(course_dataset):
    located, fallback = locate(course_dataset.root, "sample")
    assert located.source == "sample" and located.location == SAMPLE_DIR and fallback is None


@pytest.mark.parametrize("source", ["course", "idx"])
def test_explicit_source_missing_names_data_root(tmp_path, source):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=rf"data\.root={empty} holds none"):
        locate(empty, source)
    with pytest.raises(DataError, match=rf"data\.root={tmp_path / 'absent'} does not exist"):
        locate(tmp_path / "absent", source)


def test_explicit_course_source_does_not_settle_for_idx_files(tmp_path):
    copy_sample_idx(tmp_path)
    with pytest.raises(DataError, match="expected train.tar and test.tar"):
        locate(tmp_path, "course")


def test_explicit_download_that_fails_is_an_error_not_a_fallback(unreachable_root):
    with pytest.raises(DataError, match="downloading MNIST into .* failed"):
        locate(unreachable_root, "download")


def test_unknown_source_is_refused(compose):
    with pytest.raises(ConfigError, match="data.source=ftp is out of range: must be one of"):
        validate(compose(["data.source=ftp"]))


# --- the decode cache ---


def test_first_load_decodes_and_writes_one_cache_file_per_split(course_dataset, data_cfg, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="mnist_exp.data"):
        data = load_mnist(data_cfg(course_dataset.root))

    assert len(decoded_messages(caplog)) == 2
    assert len(cache_files(tmp_path / "cache", "train")) == 1 and len(cache_files(tmp_path / "cache", "test")) == 1
    np.testing.assert_array_equal(data.train.images.numpy(), course_dataset.train.images)
    np.testing.assert_array_equal(data.test.labels.numpy(), course_dataset.test.labels)
    assert data.train.sha256 == content_hash(course_dataset.train.images, course_dataset.train.labels)


def test_second_load_is_served_from_the_cache(course_dataset, data_cfg, tmp_path, caplog):
    cfg = data_cfg(course_dataset.root)
    first = load_mnist(cfg)
    [cache_file] = cache_files(tmp_path / "cache", "train")
    # Replace the cached split with different but self-consistent content: only a load that
    # really reads the cache file can return it.
    doctored = 255 - first.train.images
    torch.save(
        {
            "images": doctored,
            "labels": first.train.labels,
            "sha256": content_hash(doctored.numpy(), first.train.labels.numpy()),
        },
        cache_file,
    )

    caplog.clear()  # the first load's lines are caught too when an earlier test left the root logger at INFO
    with caplog.at_level(logging.INFO, logger="mnist_exp.data"):
        second = load_mnist(cfg)

    assert decoded_messages(caplog) == []
    assert torch.equal(second.train.images, doctored)


@pytest.mark.parametrize("damage", ["truncated", "bytes changed"])
def test_damaged_cache_is_detected_warned_about_and_rebuilt_identically(
    course_dataset, data_cfg, tmp_path, caplog, damage
):
    cfg = data_cfg(course_dataset.root)
    first = load_mnist(cfg)
    [cache_file] = cache_files(tmp_path / "cache", "train")
    raw = bytearray(cache_file.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        middle = len(raw) // 2  # inside the 400 x 784 image bytes, which make up most of the file
        raw[middle : middle + 16] = bytes(b ^ 0xFF for b in raw[middle : middle + 16])
    cache_file.write_bytes(bytes(raw))

    caplog.clear()  # as above: only the second load's lines
    with caplog.at_level(logging.INFO, logger="mnist_exp.data"):
        second = load_mnist(cfg)

    assert any(
        r.levelno == logging.WARNING and str(cache_file) in r.getMessage() and "unusable" in r.getMessage()
        for r in caplog.records
    )
    assert len(decoded_messages(caplog)) == 1  # only the damaged split was decoded again
    assert torch.equal(second.train.images, first.train.images) and second.train.sha256 == first.train.sha256
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mnist_exp.data"):
        load_mnist(cfg)
    assert caplog.records == []  # the rebuilt file is trusted again


def test_changed_source_invalidates_the_cache(tmp_path, make_course_dataset, data_cfg):
    root = tmp_path / "data"
    make_course_dataset(root, 50, 20)
    cfg = data_cfg(root)
    before = load_mnist(cfg)

    replaced = make_course_dataset(root, 50, 20, offset=1000)  # new digits, same file names, same size class
    after = load_mnist(cfg)

    assert len(cache_files(tmp_path / "cache", "train")) == 2
    np.testing.assert_array_equal(after.train.images.numpy(), replaced.train.images)
    assert after.train.sha256 != before.train.sha256


def test_touching_the_source_alone_invalidates_the_cache(tmp_path, make_course_dataset, data_cfg):
    root = tmp_path / "data"
    make_course_dataset(root, 50, 20)
    load_mnist(data_cfg(root))
    stat = (root / "train.tar").stat()
    os.utime(root / "train.tar", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    load_mnist(data_cfg(root))

    assert len(cache_files(tmp_path / "cache", "train")) == 2
    assert len(cache_files(tmp_path / "cache", "test")) == 1


def test_unwritable_cache_dir_only_warns(course_dataset, compose, unreachable_root, caplog):
    cfg = compose([f"data.root={course_dataset.root}", f"data.cache_dir={unreachable_root}"]).data

    with caplog.at_level(logging.WARNING, logger="mnist_exp.data"):
        data = load_mnist(cfg)

    assert len(data.train) == 400 and len(data.test) == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("cannot write the data cache" in w for w in warnings)


# --- limits ---


def test_limits_take_the_first_images_and_change_the_hash(course_dataset, data_cfg):
    full = load_mnist(data_cfg(course_dataset.root))
    limited = load_mnist(data_cfg(course_dataset.root, "data.limit_train=100", "data.limit_test=30"))

    assert (len(limited.train), len(limited.test)) == (100, 30)
    assert torch.equal(limited.train.images, full.train.images[:100])
    assert torch.equal(limited.test.labels, full.test.labels[:30])
    assert limited.train.sha256 == content_hash(course_dataset.train.images[:100], course_dataset.train.labels[:100])
    assert limited.train.sha256 != full.train.sha256 and limited.test.sha256 != full.test.sha256


def test_limit_above_the_split_size_keeps_everything(course_dataset, data_cfg):
    full = load_mnist(data_cfg(course_dataset.root))
    limited = load_mnist(data_cfg(course_dataset.root, "data.limit_train=100000"))
    assert limited.train.sha256 == full.train.sha256 and len(limited.train) == 400


# --- input normalization ---


def test_null_mean_and_std_are_the_training_splits_own_as_numpy_computes_them(course_dataset, data_cfg):
    cfg = data_cfg(course_dataset.root, "data.mean=null", "data.std=null", "data.validation_size=100")
    data = load_mnist(cfg)
    trained_on = course_dataset.train.images[:300] / 255  # the validation split's 100 images are not

    assert pixel_statistics(data.train) == pytest.approx((np.mean(trained_on), np.std(trained_on)), rel=1e-12)
    assert normalization(cfg, data.train) == pixel_statistics(data.train)
    assert normalization(data_cfg(course_dataset.root), data.train) == (0.1307, 0.3081)  # the course's, by default
    only_std = normalization(data_cfg(course_dataset.root, "data.std=null"), data.train)
    assert only_std == (0.1307, pytest.approx(np.std(trained_on), rel=1e-12))


# --- data that ends early: refused in one line naming the file, before any training ---


def truncated_roots(base, course_dataset) -> dict:
    """data.root folders of real digits, each with one file cut as `head -c` would: {root: the cut file}."""
    tars = {name: (course_dataset.root / name).read_bytes() for name in ("train.tar", "test.tar")}
    idx = {name: (SAMPLE_DIR / name).read_bytes() for name in IDX_FILES}
    images = "train-images-idx3-ubyte"
    plain_images, gz_tar = gzip.decompress(idx[f"{images}.gz"]), gzip.compress(tars["train.tar"])
    cases = {  # root: (its files, the one cut, the bytes it keeps)
        "tar-boundary": (tars, "train.tar", 1024 * 150),  # just after a member: no end-of-archive block
        "tar-member": (tars, "train.tar", 1024 * 150 + 700),  # inside a PNG
        "test-header": (tars, "test.tar", 1024 * 60 + 100),  # inside a header, in the test split
        "tar-gz": ({**tars, "train.tar": gz_tar}, "train.tar", len(gz_tar) // 2),
        "idx": ({**idx, images: plain_images}, images, len(plain_images) - 784 * 7 - 5),
        "idx-gz": (idx, f"{images}.gz", len(idx[f"{images}.gz"]) // 2),
    }
    roots = {}
    for label, (files, cut, keep) in cases.items():
        root = base / label
        root.mkdir(parents=True)
        for name, data in files.items():
            if not (label == "idx" and name == f"{images}.gz"):  # the plain file stands in for it
                (root / name).write_bytes(data[:keep] if name == cut else data)
        roots[root] = root / cut
    return roots


def test_truncated_data_fails_its_run_in_one_line_naming_the_file_before_training(project_dir, course_dataset):
    roots = truncated_roots(project_dir / "cut", course_dataset)
    result = run_script(
        "train.py",
        "-m",
        "hydra/launcher=basic",
        "model=mlp",
        "trainer.epochs=1",
        f"data.root={','.join(map(str, roots))}",
        cwd=project_dir,
    )

    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output[-3000:]
    runs = {run.data.params["data.root"]: run for run in job_runs(f"sqlite:///{project_dir}/mlflow.db")}
    assert set(runs) == set(map(str, roots)), output[-3000:]
    for root, cut_file in roots.items():
        run = runs[str(root)]
        error = run.data.tags[record.ERROR]
        assert run.info.status == "FAILED" and "train_acc" not in run.data.metrics, (root, error)
        assert error.startswith(f"DataError: {cut_file}: ") and "truncated" in error, error
        assert f"FAILED: {error}" in output, output[-3000:]  # the job's one line, as the run records it
