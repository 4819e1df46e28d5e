"""Training and evaluation throughput: our loop against the seed pipeline, in one process.

    .venv/bin/python benchmarks/epoch_throughput.py            # 60k-image course tar, ~3 minutes
    .venv/bin/python benchmarks/epoch_throughput.py --smoke    # tiny sizes, seconds (CI)

For LeNet-5 and the MLP at batch 64 and 256, the same number of SGD steps (lr 0.01, momentum 0.9,
same initial weights) through:
  seed       a Dataset that opens each PNG with PIL per item (files extracted from the course tar),
             ToTensor + Normalize(0.1307, 0.3081), DataLoader(batch_size, shuffle=True),
             torch.optim.SGD
  preloaded  every image decoded and normalized up front: TensorDataset + the same DataLoader and
             loop (what "just preload the tensors" gives)
  ours NCHW  mnist_exp.training.train_epoch + InputPipeline + make_optimizer (fused SGD), with the
             batch in the default layout (what the channels-last view below adds)
  ours       the same as shipped: one-channel batches strided channels-last, so oneDNN's
             convolutions skip their layout reorders
Each figure is the best of --repeats interleaved measurements (the least disturbed by other
processes); the ratios compare figures from this same run. Evaluation: mnist_exp.training.evaluate
(inference_mode, batches of 1000; NCHW and as shipped) against the seed's Dataset and
DataLoader(batch 1000) under no_grad.
"""

from __future__ import annotations

import time

import benchlib
import torch

MODELS = ("lenet5", "mlp")
BATCHES = (64, 256)
EVAL_BATCH = 1000


def main() -> None:
    p = benchlib.parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--images", type=int, default=12_800, help="training images per measurement (steps = images / batch)"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    args = p.parse_args()
    if args.smoke:
        args.images, args.repeats = 256, 1
    threads = benchlib.set_threads(args.threads)

    from mnist_exp import training
    from mnist_exp.training import InputPipeline, Training, evaluate, seed_epoch, train_epoch

    folder = benchlib.course_dataset(*benchlib.sizes(args.smoke))
    data = benchlib.load_course(folder, benchlib.CACHE / "tensor-cache")
    train_png, test_png = (benchlib.extracted(folder / f"{s}.tar") for s in ("train", "test"))
    print(f"# {benchlib.machine_line()}")
    print(
        f"# data: {folder} ({len(data.train)} train / {len(data.test)} test PNGs); "
        f"{args.images} images per measurement, best of {args.repeats}"
    )

    inputs = InputPipeline(benchlib.MEAN, benchlib.STD)
    cpu = torch.device("cpu")
    preloaded_x = ((data.train.images.float() / 255 - benchlib.MEAN) / benchlib.STD).unsqueeze(1)
    preloaded = torch.utils.data.TensorDataset(preloaded_x, data.train.labels)
    seed_train = benchlib.SeedPngDataset(train_png)  # listing 60k files once, outside the timings
    channels_last = training._channels_last

    def ours(model, optimizer, batch, subset, nchw=False):
        training._channels_last = (lambda x: x) if nchw else channels_last
        try:
            seed_epoch(0, 1)
            train_epoch(Training(model, optimizer, None, inputs, cpu), subset, batch)
        finally:
            training._channels_last = channels_last

    rows = []
    for name in args.models:
        for batch in args.batches:
            steps = max(1, args.images // batch)
            images = steps * batch
            subset = data.train.part(0, images)  # train_epoch on it = `steps` batches
            contenders = {
                "seed": (
                    benchlib.build(name, ours=False),
                    lambda m, o, b=batch, s=steps: benchlib.seed_train_steps(
                        m, o, torch.utils.data.DataLoader(seed_train, batch_size=b, shuffle=True), s
                    ),
                ),
                "preloaded": (
                    benchlib.build(name, ours=False),
                    lambda m, o, b=batch, s=steps: benchlib.seed_train_steps(
                        m, o, torch.utils.data.DataLoader(preloaded, batch_size=b, shuffle=True), s
                    ),
                ),
                "ours NCHW": (benchlib.build(name), lambda m, o, b=batch, d=subset: ours(m, o, b, d, nchw=True)),
                "ours": (benchlib.build(name), lambda m, o, b=batch, d=subset: ours(m, o, b, d)),
            }
            best = {key: float("inf") for key in contenders}
            for _ in range(args.repeats):
                for key, ((model, optimizer), run) in contenders.items():
                    started = time.perf_counter()
                    run(model, optimizer)
                    best[key] = min(best[key], time.perf_counter() - started)
            speed = {key: images / seconds for key, seconds in best.items()}
            rows.append(
                [
                    name,
                    batch,
                    steps,
                    speed["seed"],
                    speed["preloaded"],
                    speed["ours NCHW"],
                    speed["ours"],
                    f"{speed['ours'] / speed['seed']:.1f}x",
                    f"{speed['ours'] / speed['preloaded']:.1f}x",
                ]
            )
            print(f"  {name} batch {batch}: done", flush=True)
    print(
        benchlib.table(
            [
                "model",
                "batch",
                "steps",
                "seed img/s",
                "preloaded img/s",
                "ours NCHW img/s",
                "ours img/s",
                "ours/seed",
                "ours/preloaded",
            ],
            rows,
            f"Training throughput ({threads} torch threads)",
        )
    )

    rows = []
    for name in args.models:
        model, _ = benchlib.build(name)
        seed_loader = torch.utils.data.DataLoader(benchlib.SeedPngDataset(test_png), batch_size=EVAL_BATCH)

        def ours_eval(nchw=False):
            training._channels_last = (lambda x: x) if nchw else channels_last
            try:
                evaluate(model, data.test, EVAL_BATCH, inputs, cpu)
            finally:
                training._channels_last = channels_last

        contenders = {
            "seed": lambda: benchlib.seed_evaluate(model, seed_loader),
            "ours NCHW": lambda: ours_eval(nchw=True),
            "ours": ours_eval,
        }
        ours_eval(nchw=True), ours_eval()  # warm-up
        best = {key: float("inf") for key in contenders}
        for _ in range(args.repeats):
            for key, run in contenders.items():
                best[key] = min(best[key], benchlib.best_of(1, run))
        speed = {key: len(data.test) / seconds for key, seconds in best.items()}
        rows.append(
            [
                name,
                EVAL_BATCH,
                speed["seed"],
                speed["ours NCHW"],
                speed["ours"],
                f"{speed['ours'] / speed['seed']:.1f}x",
            ]
        )
    print(
        benchlib.table(
            ["model", "batch", "seed img/s", "ours NCHW img/s", "ours img/s", "ours/seed"],
            rows,
            f"Evaluation throughput, {len(data.test)} test images ({threads} torch threads)",
        )
    )


if __name__ == "__main__":
    main()
