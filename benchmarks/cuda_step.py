"""CUDA step benchmark: achieved bandwidth of each algorithm's step as a share of a
device-to-device copy measured in the same run. One command on an H100/H200:

    python benchmarks/cuda_step.py --json benchmarks/results/cuda.json

Every element-wise algorithm, layouts 1 x 20M and 2000 x 10k float32; torchstep's default
(fused Triton) step next to torch.optim's foreach and fused (where torch has one). Checked on
machines without a GPU by ``--device cpu --interpret --layouts 3x5k`` (Triton's interpreter).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--layouts", default="1x20M,2000x10k")
    parser.add_argument("--algorithms", default="all")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--interpret", action="store_true", help="run the Triton kernels in Triton's CPU interpreter")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

    import torch

    import torchstep.optim as ts_optim
    from torchstep.backends import use
    from torchstep.bench import ALGORITHMS, bytes_per_element
    from torchstep.cli.bench import parse_layouts

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn) -> float:
        """Median seconds of ``fn`` over ``args.repeat`` runs (CUDA events on a GPU)."""
        fn()
        sync()
        times = []
        for _ in range(args.repeat):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                import time

                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    names = list(ALGORITHMS) if args.algorithms == "all" else args.algorithms.split(",")
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreted)",
               "torch": torch.__version__, "rows": []}
    for layout, (count, size) in parse_layouts(args.layouts).items():
        src, dst = torch.empty(count * size, device=device), torch.empty(count * size, device=device)
        copy_bw = 8 * count * size / timed(lambda: dst.copy_(src))
        results.setdefault("copy_GBps", {})[layout] = copy_bw / 1e9
        for name in names:
            cls_name, kwargs, nstate, torch_fused = ALGORITHMS[name]
            moved = bytes_per_element(nstate) * count * size
            paths = {"torchstep": (ts_optim, {}), "torch foreach": (torch.optim, {"foreach": True})}
            if torch_fused:
                paths["torch fused"] = (torch.optim, {"fused": True})
            row = {"algorithm": name, "layout": layout}
            for path, (lib, extra) in paths.items():
                if args.interpret and path != "torchstep":
                    continue
                params = [torch.nn.Parameter(torch.randn(size, device=device)) for _ in range(count)]
                for p in params:
                    p.grad = torch.randn_like(p) * 1e-2
                opt = getattr(lib, cls_name)(params, **kwargs, **extra)
                with use("triton" if (args.interpret and path == "torchstep") else "auto"):
                    seconds = timed(opt.step)
                row[path] = {"ms": seconds * 1e3, "share_of_copy": moved / seconds / copy_bw}
                del opt, params
            results["rows"].append(row)
            shares = ", ".join(f"{k} {v['share_of_copy']:.0%}" for k, v in row.items() if isinstance(v, dict))
            print(f"{name:<28} {layout:<10} {shares}", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
