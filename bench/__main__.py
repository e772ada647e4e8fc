"""``make bench``: run every benchmark and print ``name: value`` lines (ratios measured in one run).

``python -m bench [--only NAME ...] [--device cuda]``
"""

from __future__ import annotations

import sys
import time
from functools import partial

from bench.compact import compact_features
from bench.epochs import probe_epoch_vs_head_compute
from bench.extraction import extract_overhead, extract_vs_limit
from bench.lockstep import lockstep_epoch_vs_cached_epoch, lockstep_forwards_vs_paper_code
from bench.probing import cache_vs_recompute, probe_rss_growth, sweep_vs_single
from bench.reading import feature_read_gbps_vs_memcpy
from bench.synthetic import synthetic_speed

BENCHMARKS = {
    "extract_overhead": extract_overhead,
    "extract_limit": extract_vs_limit,
    "synthetic": synthetic_speed,
    "cache_vs_recompute": cache_vs_recompute,
    # the paper computes the training loss at every target pixel; on a CPU that per-head work
    # dominates, so the same figures are also measured with the loss at every 4th pixel
    "cache_vs_recompute_loss_stride4": partial(cache_vs_recompute, loss_stride=4),
    "sweep": sweep_vs_single,
    "sweep_loss_stride4": partial(sweep_vs_single, loss_stride=4),
    "probe_rss": probe_rss_growth,
    "compact": compact_features,
    "feature_read": feature_read_gbps_vs_memcpy,
    "probe_epoch": probe_epoch_vs_head_compute,
    "lockstep_forwards_vs_paper_code": lockstep_forwards_vs_paper_code,
    "lockstep_epoch_vs_cached_epoch": lockstep_epoch_vs_cached_epoch,
}

ON_DEVICE = {"extract_overhead", "extract_limit", "cache_vs_recompute", "cache_vs_recompute_loss_stride4", "sweep",
             "sweep_loss_stride4", "probe_epoch"}
#: figures of a GPU (``--device cuda``); a CPU run skips them, saying so
GPU_ONLY = {"probe_epoch"}


def main(argv: list[str] | None = None, prog: str = "python -m bench") -> int:
    from midprobe import options

    p = options.command_parser(prog=prog, description=__doc__, raw=False, parents=[options.device_option(
        help="run extraction and probe benchmarks on this device (cuda: backbones in bf16)")])
    p.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run only these")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    for name in args.only or BENCHMARKS:
        if name in GPU_ONLY and not cuda and not args.only:
            print(f"# {name}: a GPU figure, skipped on {args.device} (python -m bench --device cuda)", file=sys.stderr)
            continue
        started = time.perf_counter()
        kwargs = {"device": args.device} if name in ON_DEVICE else {}
        results = BENCHMARKS[name](**kwargs)
        for key, value in results.items():
            suffix = "_gpu" if name in ON_DEVICE and cuda else ""
            print(f"{key}{suffix}: {value:.3f}", flush=True)
        print(f"# {name} took {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
