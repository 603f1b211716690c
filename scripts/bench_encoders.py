"""Benchmark ResNet encoder presets: milliseconds per training update.

One update = forward + backward + Adam step of the encoder on 2 * B images
(two frames per sample, as in a horizon-1 world-model update) with an MSE
loss to a random latent target. Prints one table row per
(encoder, image size, batch, threads).

    python scripts/bench_encoders.py                 # one thread, about 1.5 min
    python scripts/bench_encoders.py --threads 1 2   # also two threads
    python scripts/bench_encoders.py --skip-paper    # leave out the slow 69-layer preset
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pjepa_ext.resnet import PAPER_RESNET, ResNetEncoder, parameter_count  # noqa: E402

#: name -> (constructor kwargs, whether it is the paper's preset)
ENCODERS = {
    "paper ResNet (8 blocks, w32)": (PAPER_RESNET, True),
    "ResNet 2 blocks, w32": (dict(width=32, blocks_per_stage=2, latent_dim=256), False),
    "ResNet 1 block, w32": (dict(width=32, blocks_per_stage=1, latent_dim=256), False),
    "ResNet 1 block, w16": (dict(width=16, blocks_per_stage=1, latent_dim=256), False),
}
#: The paper's preset is timed only at its own setting: it is slow.
PAPER_SETTING = dict(size=64, batch=256)


def forward_mflop_per_image(encoder: nn.Module, size: int) -> float:
    """Return forward MFLOP per image (2 x multiply-accumulates of conv and linear layers)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel_macs = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output[0].numel() * kernel_macs
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(count) for m in encoder.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        encoder(torch.zeros(1, 3, size, size, dtype=torch.uint8))
    for handle in handles:
        handle.remove()
    return 2 * total / 1e6


def ms_per_update(encoder: nn.Module, size: int, batch: int, repeats: int, warmup: int,
                  device: torch.device) -> tuple[float, float]:
    """Return median (wall-clock, process CPU) milliseconds of one update on 2 * batch images.

    CPU time well above wall time x threads, or wall well above CPU at one
    thread, means the machine was busy with other work.
    """
    optimizer = torch.optim.Adam(encoder.parameters(), lr=3e-4)
    images = torch.randint(0, 256, (2 * batch, 3, size, size), dtype=torch.uint8, device=device)
    target = torch.randn(2 * batch, encoder.latent_dim, device=device)
    wall, cpu = [], []
    for step in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = nn.functional.mse_loss(encoder(images), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            wall.append(1e3 * (time.perf_counter() - start))
            cpu.append(1e3 * (time.process_time() - start_cpu))
    return statistics.median(wall), statistics.median(cpu)


def parse_args(argv=None) -> argparse.Namespace:
    """Return the parsed command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1],
                        help="torch thread counts to time (default: 1)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 32],
                        help="image sizes (default: 64 32)")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256],
                        help="samples per batch; each sample is 2 frames (default: 64 128 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed updates per row (median)")
    parser.add_argument("--paper-repeats", type=int, default=2,
                        help="timed updates for the paper's preset (about 2-4 s each on CPU)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates before timing")
    parser.add_argument("--skip-paper", action="store_true",
                        help="leave out the paper's 69-layer preset")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    args = parser.parse_args(argv)
    if min(args.threads) < 1 or args.repeats < 1 or args.paper_repeats < 1 or args.warmup < 0:
        parser.error("--threads, --repeats and --paper-repeats must be >= 1, --warmup >= 0")
    return args


def main(argv=None) -> None:
    """Time every preset and print the table."""
    args = parse_args(argv)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, interop threads "
          f"{torch.get_num_interop_threads()}; one update = fwd+bwd+Adam on 2*B frames")
    header = (f"{'encoder':<30} {'params':>10} {'MFLOP/img':>9} {'size':>5} {'B':>4} "
              f"{'threads':>7} {'ms/update':>10} {'cpu ms':>8}")
    print(header)
    print("-" * len(header))
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, (kwargs, is_paper) in ENCODERS.items():
            if is_paper and args.skip_paper:
                continue
            torch.manual_seed(0)
            encoder = ResNetEncoder(**kwargs).to(device)
            for size in args.sizes:
                for batch in args.batches:
                    if is_paper and dict(size=size, batch=batch) != PAPER_SETTING:
                        continue
                    repeats = args.paper_repeats if is_paper else args.repeats
                    ms, cpu_ms = ms_per_update(encoder, size, batch, repeats, args.warmup, device)
                    print(f"{name:<30} {parameter_count(encoder):>10,} "
                          f"{forward_mflop_per_image(encoder, size):>9.1f} {size:>5} {batch:>4} "
                          f"{torch.get_num_threads():>7} {ms:>10.1f} {cpu_ms:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
