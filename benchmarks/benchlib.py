"""Shared pieces of the benchmarks: synthetic course-format data, the seed pipeline, timing, tables.

Every benchmark compares our code path with a reference *in the same process run*, because the
machines these run on are shared and absolute timings drift; the ratio is the number to read.
Nothing here asserts on a timing.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"  # git-ignored: generated archives, extracted PNGs, tensor caches
SHARED_SAMPLE = (
    ROOT.parent / "shared" / "datasets" / "mnist-10k"
)  # the course-format twin of data/mnist-10k, where present
MEAN, STD = 0.1307, 0.3081


# --- command line and output ---


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds: checks the script still runs")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    return p


def set_threads(threads: int | None) -> int:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def machine_line() -> str:
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, python {platform.python_version()}"
    )


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """A GitHub-flavoured markdown table (readable as plain text, pasteable into the README)."""
    align = [
        "right" if all(isinstance(v, (int, float)) or v == "" or _RATIO.fullmatch(str(v)) for v in column) else "left"
        for column in zip(*rows)
    ]  # numbers and ratios right, text left
    text = tabulate(
        [[_fmt(c) for c in row] for row in rows], headers, tablefmt="pipe", disable_numparse=True, colalign=align
    )
    return f"\n{title}\n\n{text}\n" if title else text


_RATIO = re.compile(r"[<>~]?[\d.,]+ ?(x|%|s|MiB)")


def _fmt(value) -> str:
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if value < 1 else f"{value:.2f}"
    return str(value)


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    """The fastest of `repeats` timings of fn() in seconds: the least disturbed by other processes."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


# --- data: the course format (tar of {split}/{ID:05d}_{label}.png), generated from real digits ---


def sample_pngs(split: str) -> list[tuple[bytes, int]]:
    """(png bytes, label) of the real mnist-10k digits of `split`, in ID order.

    Taken from the shared course-format tars when present (their exact PNG encoding); otherwise
    encoded here with PIL from the IDX files shipped in data/mnist-10k.
    """
    shared = SHARED_SAMPLE / f"{split}.tar"
    if shared.is_file():
        out = []
        with tarfile.open(shared) as archive:
            for member in archive:
                if member.isfile():
                    label = int(member.name.rsplit("_", 1)[1].split(".")[0])
                    out.append((member.name, archive.extractfile(member).read(), label))
        out.sort(key=lambda item: item[0])
        return [(png, label) for _, png, label in out]
    from PIL import Image

    from mnist_exp.formats import read_idx_split

    names = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }[split]
    images, labels = read_idx_split(*(ROOT / "data" / "mnist-10k" / n for n in names))
    out = []
    for image, label in zip(images, labels):
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="PNG")
        out.append((buffer.getvalue(), int(label)))
    return out


def write_course_tar(path: Path, split: str, count: int, pngs: list[tuple[bytes, int]]) -> None:
    """A course-format tar of `count` images: the given digits repeated, IDs 00000.. in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    digits = max(5, len(str(count - 1)))
    with tarfile.open(temporary, "w", format=tarfile.USTAR_FORMAT) as archive:
        for i in range(count):
            png, label = pngs[i % len(pngs)]
            info = tarfile.TarInfo(f"{split}/{i:0{digits}d}_{label}.png")
            info.size, info.mtime, info.mode = len(png), 0, 0o644
            archive.addfile(info, io.BytesIO(png))
    os.replace(temporary, path)


FULL_SIZES = (60_000, 10_000)  # full MNIST's split sizes: the mnist-10k digits repeated
SMOKE_SIZES = (1_024, 1_000)


def sizes(smoke: bool) -> tuple[int, int]:
    return SMOKE_SIZES if smoke else FULL_SIZES


def course_dataset(n_train: int, n_test: int, folder: Path | None = None) -> Path:
    """A folder holding train.tar and test.tar of the requested sizes (generated once, then reused)."""
    folder = folder or CACHE / f"course-{n_train}-{n_test}"
    stamp = folder / "complete"
    if not stamp.exists():
        for split, count in (("train", n_train), ("test", n_test)):
            write_course_tar(folder / f"{split}.tar", split, count, sample_pngs(split))
        stamp.write_text(f"{n_train} {n_test}\n")
    return folder


def extracted(tar_path: Path) -> Path:
    """The tar extracted next to itself (once), for the seed pipeline's per-file reads."""
    target = tar_path.with_suffix("")  # train.tar -> train/ holding train/*.png
    stamp = target / ".complete"
    if not stamp.exists():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar_path) as archive:
            archive.extractall(target, filter="data")
        stamp.write_text("")
    return target


# --- the seed pipeline: one PIL decode per image per epoch, torchvision transforms, DataLoader ---


class SeedPngDataset:
    """What the project started from: a map-style Dataset that opens each PNG with PIL per item."""

    def __init__(self, folder: Path):
        from torchvision import transforms

        self.files = sorted(p for p in folder.rglob("*.png"))
        self.labels = [int(p.stem.rsplit("_", 1)[1]) for p in self.files]
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from PIL import Image

        with Image.open(self.files[index]) as image:
            return self.transform(image), self.labels[index]


def seed_train_steps(model, optimizer, loader, steps: int) -> int:
    """The seed training loop for `steps` batches (wrapping around the loader); returns images seen."""
    import torch.nn.functional as F

    model.train()
    seen = 0
    while True:
        for x, y in loader:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
            seen += len(y)
            steps -= 1
            if steps == 0:
                return seen


def seed_evaluate(model, loader) -> int:
    import torch
    import torch.nn.functional as F

    model.eval()
    seen = 0
    with torch.no_grad():
        for x, y in loader:
            F.cross_entropy(model(x), y, reduction="sum").item()
            seen += len(y)
    return seen


# --- models and configs as the framework builds them ---


def build(model_name: str, seed: int = 0, ours: bool = True):
    """(model, SGD lr 0.01 momentum 0.9) as a default run of `model=<name>` builds them: the same initial
    weights for every `seed`; the optimizer from mnist_exp.training.make_optimizer, or for the seed
    pipeline (ours=False) a plain torch.optim.SGD."""
    import torch

    from mnist_exp.models import LayerSwitches, build_model
    from mnist_exp.training import make_optimizer

    cfg = compose([f"model={model_name}"])
    torch.manual_seed(seed)
    model = build_model(cfg.model, LayerSwitches()).model
    if not ours:
        return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return model, make_optimizer(model, cfg.optimizer, 0.0)


def compose(overrides: list[str]):
    """The config train.py would get for these overrides (Hydra's compose API, same schemas)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from mnist_exp import schema

    schema.register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def load_course(folder: Path, cache_dir: Path):
    """Both splits of a course-format folder through mnist_exp.data (decoded once, then cached)."""
    from mnist_exp.data import load_mnist

    return load_mnist(compose([f"data.root={folder}", "data.source=course", f"data.cache_dir={cache_dir}"]).data)
