"""Side-by-side timing for the benchmark scripts: candidates run interleaved, medians compared.

Interleaving (a, b, a, b, ...) exposes every candidate to the same machine state, so a ratio
survives noise that would swamp two separate runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

# glibc hands freed blocks above 128 KiB back to the OS and page-faults them in again on the next
# allocation; a (256, 1000) float tensor is 1 MiB, so on a VM that noise alone moved one loss
# step between 0.5 and 1.8 ms from run to run. Keeping freed memory in the process measures the
# kernels instead; `--system-malloc` measures with glibc's defaults.
STEADY_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(1 << 27),
}


def steady_allocator() -> str:
    """Re-run this script with STEADY_MALLOC unless asked not to; return what is in effect."""
    if "--system-malloc" in sys.argv:
        return "glibc defaults"
    if any(os.environ.get(k) != v for k, v in STEADY_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **STEADY_MALLOC})
    return "glibc with freed memory kept in the process (MALLOC_*_THRESHOLD_ = 1 GiB)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    candidates: dict[str, Callable[[], object]],
    device: torch.device,
    *,
    rounds: int,
    calls_per_round: int,
    warmup: int = 2,
) -> dict[str, float]:
    """Median seconds per call of each candidate, measured in interleaved rounds."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(calls_per_round):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / calls_per_round)
    return {name: statistics.median(values) for name, values in samples.items()}


def devices(only: str | None = None) -> list[torch.device]:
    """The devices to measure on: ``only`` (``cpu`` or ``cuda``), else the CPU and any GPU."""
    if only == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    if only is not None:
        return [torch.device(only)]
    found = [torch.device("cpu")]
    if torch.cuda.is_available():
        found.append(torch.device("cuda"))
    return found


def setup(
    title: str,
    description: str,
    *,
    rounds: int,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """Parse the options every benchmark shares (and ``options``' own), print the header line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds")
    parser.add_argument("--system-malloc", action="store_true", help="glibc's own thresholds")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="measure on this device only (default: the CPU, then the GPU if there is one)",
    )
    if options is not None:
        options(parser)
    args = parser.parse_args()
    allocator = steady_allocator()
    torch.set_num_threads(args.threads)
    print(f"{title}: float32, torch {torch.__version__}, {args.threads} CPU thread(s), {allocator}")
    if any(device.type == "cuda" for device in devices(args.device)):
        print(f"GPU: {torch.cuda.get_device_name()}")
    return args
