"""Hardware efficiency: the FLOP/s LeNet-5 (and the MLP) training achieves against the machine's matmul peak.

    .venv/bin/python benchmarks/hardware_efficiency.py            # ~1 minute
    .venv/bin/python benchmarks/hardware_efficiency.py --smoke    # seconds (CI)

Model FLOPs are counted from the layer shapes (forward hooks record each Conv2d / Linear output):
multiply-adds per image = out_channels x out_h x out_w x in_channels x kh x kw for a convolution,
in x out for a linear layer; 281,640 for this LeNet-5 without padding (conv 86,400 + 153,600, fc
30,720 + 10,080 + 840). Training ~ 3x forward (the backward pass costs about twice the forward),
FLOPs = 2 x multiply-adds. Pooling, activations, the loss and the optimizer are not counted.
The peak is the best of several large torch.mm (float32, n x n) on the same number of threads:
what MKL reaches on this machine, not the CPU's datasheet number. Throughput is measured with
mnist_exp.training.train_epoch, as in a real run, best of --repeats.
"""

from __future__ import annotations

import benchlib
import torch
from torch import nn


def forward_macs(model: nn.Module) -> int:
    """Multiply-adds of one 28x28 image through model's Conv2d and Linear layers."""
    macs = 0

    def hook(layer, inputs, output):
        nonlocal macs
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            macs += output[0].numel() * (layer.in_channels // layer.groups) * kh * kw
        else:
            macs += layer.in_features * layer.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()
        model(torch.zeros(1, 1, 28, 28))
    for handle in handles:
        handle.remove()
    return macs


def peak_matmul(n: int, repeats: int) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    seconds = benchlib.best_of(repeats, lambda: torch.mm(a, b))
    return 2 * n**3 / seconds


def main() -> None:
    p = benchlib.parser(__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=25_600, help="training images per measurement")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    size = 4096
    if args.smoke:
        args.images, args.repeats, size = 1_024, 1, 1024
    threads = benchlib.set_threads(args.threads)

    from mnist_exp.data import Split
    from mnist_exp.training import InputPipeline, Training, evaluate, seed_epoch, train_epoch

    print(f"# {benchlib.machine_line()}")
    peak = max(peak_matmul(size, args.repeats), peak_matmul(size // 2, args.repeats))
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (args.images,), generator=generator)
    split = Split(images, labels, "")
    inputs, cpu = InputPipeline(benchlib.MEAN, benchlib.STD), torch.device("cpu")

    rows = []
    for name in ("lenet5", "mlp"):
        model, optimizer = benchlib.build(name)
        macs = forward_macs(model)
        model.train()
        training = Training(model, optimizer, None, inputs, cpu)
        for batch in (64, 256):
            seed_epoch(0, 1)
            train_epoch(training, split.part(0, 10 * batch), batch)  # warm-up
            seconds = benchlib.best_of(args.repeats, lambda: train_epoch(training, split, batch))
            speed = len(split) / seconds
            achieved = speed * 3 * 2 * macs
            rows.append(
                [name, f"train, batch {batch}", f"{macs:,}", speed, achieved / 1e9, f"{100 * achieved / peak:.1f}%"]
            )
        seconds = benchlib.best_of(args.repeats, lambda: evaluate(model, split, 1000, inputs, cpu))
        speed = len(split) / seconds
        achieved = speed * 2 * macs
        rows.append([name, "evaluate, batch 1000", f"{macs:,}", speed, achieved / 1e9, f"{100 * achieved / peak:.1f}%"])
    rows.append([f"torch.mm {size}x{size} (peak)", "", "", "", peak / 1e9, "100%"])
    print(
        benchlib.table(
            ["model", "pass", "forward MACs/image", "images/s", "GFLOP/s", "of peak"],
            rows,
            f"FLOP/s achieved vs. measured float32 matmul peak ({threads} torch threads)",
        )
    )


if __name__ == "__main__":
    main()
