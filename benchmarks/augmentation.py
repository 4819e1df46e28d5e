"""Augmentation cost per epoch: our whole-batch distortion vs torchvision.transforms.v2 image by image.

    .venv/bin/python benchmarks/augmentation.py --threads 1     # 7,000 images, best of 3: ~1 minute
    .venv/bin/python benchmarks/augmentation.py --smoke         # 256 images, seconds (CI)

Every contender distorts the same mnist-10k training digits, batch by batch (64), each image with its
own random parameters: a random affine (rotation 15 degrees, shift 0.1, zoom 0.9-1.1, shear 15 degrees),
alone and followed by an elastic distortion (Simard et al.'s alpha 34, sigma 4 pixels).
  ours            mnist_exp.regularization.Distortion: one affine_grid + grid_sample per batch
  torchvision     v2.RandomAffine (and v2.ElasticTransform) called once per image: called on a batch,
                  they draw one set of parameters for all its images (checked below), so per-image
                  draws need one call per image
and, for scale, one LeNet-5 training epoch on the same images without augmentation (train_epoch).
"""

from __future__ import annotations

import benchlib
import numpy as np
import torch

AFFINE = {"degrees": 15.0, "translate": 0.1, "scale": (0.9, 1.1), "shear": 15.0}
ELASTIC = {"alpha": 34.0, "sigma": 4.0}
BATCH = 64


def batches(images: torch.Tensor):
    for start in range(0, len(images), BATCH):
        yield images[start : start + BATCH]


def torchvision_per_image(transform):
    def run(images: torch.Tensor) -> None:
        for batch in batches(images):
            torch.stack([transform(image) for image in batch])

    return run


def ours(distortion):
    def run(images: torch.Tensor) -> None:
        for batch in batches(images):
            distortion(batch)

    return run


def main() -> None:
    p = benchlib.parser(__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=7_000, help="training images per epoch (mnist-10k: 7,000)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.smoke:
        args.images, args.repeats = 256, 1
    threads = benchlib.set_threads(args.threads)

    from torchvision.transforms import v2

    from mnist_exp.data import SAMPLE_DIR, Split
    from mnist_exp.formats import read_idx_split
    from mnist_exp.models import LayerSwitches, LeNet5
    from mnist_exp.regularization import Distortion, Elastic, RandomAffine
    from mnist_exp.training import InputPipeline, Training, train_epoch

    raw, labels = read_idx_split(SAMPLE_DIR / "train-images-idx3-ubyte.gz", SAMPLE_DIR / "train-labels-idx1-ubyte.gz")
    raw, labels = torch.from_numpy(raw[: args.images].copy()), torch.from_numpy(labels[: args.images].copy())
    images = raw.unsqueeze(1).float().div(255)

    tv_affine = v2.RandomAffine(AFFINE["degrees"], (AFFINE["translate"],) * 2, AFFINE["scale"], AFFINE["shear"])
    # torchvision's alpha is in units of half the image (its displacement is alpha / side in [-1, 1] coordinates).
    tv_elastic = v2.ElasticTransform(alpha=2 * ELASTIC["alpha"], sigma=ELASTIC["sigma"])
    same = images[:1].expand(8, -1, -1, -1)
    shared = [bool((out == out[:1]).all()) for out in (tv_affine(same), tv_elastic(same))]  # one draw for all 8?
    affine = RandomAffine(AFFINE["degrees"], AFFINE["translate"], AFFINE["scale"], AFFINE["shear"])
    contenders = {
        "ours: affine": ours(Distortion(affine, None)),
        "torchvision per image: affine": torchvision_per_image(tv_affine),
        "ours: affine + elastic": ours(Distortion(affine, Elastic(**ELASTIC))),
        "torchvision per image: affine + elastic": torchvision_per_image(v2.Compose([tv_affine, tv_elastic])),
    }
    seconds = {name: benchlib.best_of(args.repeats, lambda run=run: run(images)) for name, run in contenders.items()}

    model = LeNet5("relu", LayerSwitches())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    training = Training(model, optimizer, None, InputPipeline(benchlib.MEAN, benchlib.STD), torch.device("cpu"))
    split = Split(raw, labels, "")
    epoch = benchlib.best_of(args.repeats, lambda: train_epoch(training, split, BATCH))

    print(f"# {benchlib.machine_line()}")
    print(
        f"# torchvision.transforms.v2 on a batch of 8 copies of one digit: RandomAffine gives 8 equal images: "
        f"{shared[0]}; ElasticTransform: {shared[1]} (one draw per call)"
    )
    rows = []
    for name, s in seconds.items():
        reference = seconds["ours: " + name.split(": ")[1]]
        rows.append([name, s, args.images / s, f"{s / reference:.1f}x", f"{100 * s / epoch:.0f}%"])
    rows.append(["LeNet-5 training epoch, no augmentation", epoch, args.images / epoch, "", "100%"])
    print(
        benchlib.table(
            ["contender", "s per epoch", "images/s", "vs ours", "of a LeNet-5 epoch"],
            rows,
            f"Augmentation of {args.images:,} images in batches of {BATCH}, per image draws, "
            f"{threads} torch thread(s), best of {args.repeats}",
        )
    )
    assert np.isfinite(list(seconds.values())).all()


if __name__ == "__main__":
    main()
