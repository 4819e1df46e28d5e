"""Data preparation: cold decode of a 60,000-PNG course tar, and the warm load from the tensor cache.

    .venv/bin/python benchmarks/data_prep.py            # 60k-image tar (generated once into benchmarks/.cache)
    .venv/bin/python benchmarks/data_prep.py --smoke    # 1k images, seconds (CI)

In one process, on the same tar:
  reference decode   the seed's way: tarfile member by member (extractfile().read()), then
                     Image.open + np.asarray per PNG
  PIL decode alone   only Image.open(formats=("PNG",)) + np.asarray over PNG bytes already in
                     memory: what PIL in one process can do at best, the bar for the cold decode
  ours: read         mnist_exp.formats.read_course_split (tarfile + PIL, with every check), in this
                     process alone (workers=0) and as load_split runs it (one forked decoding
                     process per torch thread)
  ours: cold load    mnist_exp.data.load_split on an empty cache: decode + content hash + cache write
  ours: warm load    mnist_exp.data.load_split again: read the cache file and verify its hash
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import benchlib
import numpy as np
import torch


def reference_read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The pre-optimization read_course_split, minus its checks: tarfile + one Image.open per PNG."""
    from PIL import Image

    entries = []
    with tarfile.open(path) as archive:
        for member in archive:
            if member.isfile():
                image_id, label = member.name.rsplit("/", 1)[-1][:-4].split("_")
                entries.append((int(image_id), int(label), archive.extractfile(member).read()))
    entries.sort()
    images = np.empty((len(entries), 28, 28), dtype=np.uint8)
    for i, (_, _, png) in enumerate(entries):
        with Image.open(io.BytesIO(png)) as image:
            images[i] = np.asarray(image)
    return images, np.array([label for _, label, _ in entries], dtype=np.int64)


def pil_alone(pngs: list[bytes]) -> None:
    from PIL import Image

    for png in pngs:
        with Image.open(io.BytesIO(png), formats=("PNG",)) as image:  # PIL's fastest way in
            np.asarray(image)


def main() -> None:
    p = benchlib.parser(__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.smoke:
        args.repeats = 1
    benchlib.set_threads(args.threads)

    from mnist_exp.data import Located, load_split
    from mnist_exp.formats import read_course_split

    folder = benchlib.course_dataset(*benchlib.sizes(args.smoke))
    tar = folder / "train.tar"
    with tarfile.open(tar) as archive:
        pngs = [archive.extractfile(m).read() for m in archive if m.isfile()]
    print(f"# {benchlib.machine_line()}")
    print(f"# {tar}: {len(pngs)} PNGs, {tar.stat().st_size / 2**20:.1f} MiB; best of {args.repeats}")

    expected = reference_read(tar)
    workers = torch.get_num_threads()  # what load_split passes
    for n in sorted({0, workers}):
        got = read_course_split(tar, workers=n)
        assert all(np.array_equal(a, b) for a, b in zip(expected, got)), f"read_course_split(workers={n}) disagrees"

    located = Located("course", folder, {"train": (tar,)})
    contenders = {
        "reference decode (tarfile + PIL per PNG)": lambda: reference_read(tar),
        "PIL decode alone, bytes in memory": lambda: pil_alone(pngs),
        "ours: read_course_split, workers=0": lambda: read_course_split(tar),
        f"ours: read_course_split, workers={workers}": lambda: read_course_split(tar, workers=workers),
    }
    cold, warm = (
        "ours: load_split, cold (decode + hash + write cache)",
        "ours: load_split, warm (read cache + verify hash)",
    )
    times: dict[str, list[float]] = {name: [] for name in [*contenders, cold, warm]}
    scratch = Path(tempfile.mkdtemp(prefix="mnist-exp-cache-"))
    try:
        # Interleaved, best of --repeats: this machine's speed drifts by tens of percent over a
        # minute, which would favour whichever contender ran in a fast stretch.
        for attempt in range(args.repeats):
            for name, contender in contenders.items():
                times[name].append(benchlib.best_of(1, contender))
            cache = scratch / str(attempt)
            started = time.perf_counter()
            load_split(located, "train", cache)
            times[cold].append(time.perf_counter() - started)
            started = time.perf_counter()
            warm_split = load_split(located, "train", cache)
            times[warm].append(time.perf_counter() - started)
            assert np.array_equal(warm_split.images.numpy(), expected[0])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    measured = {name: min(seconds) for name, seconds in times.items()}
    reference = measured["reference decode (tarfile + PIL per PNG)"]
    pil = measured["PIL decode alone, bytes in memory"]
    rows = [
        [what, seconds, len(pngs) / seconds, f"{reference / seconds:.1f}x", f"{pil / seconds:.1f}x"]
        for what, seconds in measured.items()
    ]
    print(
        benchlib.table(
            ["step", "seconds", "images/s", "vs reference", "vs PIL alone"],
            rows,
            f"Data preparation, {len(pngs)} images",
        )
    )


if __name__ == "__main__":
    main()
