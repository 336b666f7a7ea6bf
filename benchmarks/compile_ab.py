"""A/B of the compiled training step of `torchstep bench --compile` in one process: torchstep traced
(one torchstep::fused_step call in the graph), torchstep with its step run eagerly behind a graph
break (the behaviour before the traced step), and torch.optim compiled; interleaved rounds.

Usage: python benchmarks/compile_ab.py THREADS ROUNDS
"""
import statistics
import sys

import torch, torchstep.optim as ts, torchstep.bench_compile as bc
torch.set_num_threads(int(sys.argv[1]))
paths = {}
for label, mod, breaks in [("ts traced", ts, False), ("ts graph-break", ts, True), ("torch", torch.optim, False)]:
    model = bc._model()
    opt = mod.AdamW(model.parameters(), lr=torch.tensor(1e-3), weight_decay=0.01)
    if breaks:
        opt._traceable_step = lambda a, k: False
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(bc.BATCH, bc.WIDTHS[0], generator=gen), torch.randint(0, 10, (bc.BATCH,), generator=gen)
    def step(model=model, opt=opt, x=x, y=y):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward(); opt.step(); opt.zero_grad()
    f = torch.compile(step)
    for _ in range(5): f()
    paths[label] = f
times = {k: [] for k in paths}
for r in range(int(sys.argv[2])):
    for k, f in paths.items():
        times[k].append(bc._block_ms(f, 10))
print("threads", sys.argv[1], {k: round(statistics.median(v), 2) for k, v in times.items()},
      "traced/torch", round(statistics.median(a / b for a, b in zip(times["ts traced"], times["torch"])), 3),
      "break/torch", round(statistics.median(a / b for a, b in zip(times["ts graph-break"], times["torch"])), 3),
      "traced/break", round(statistics.median(a / b for a, b in zip(times["ts traced"], times["ts graph-break"])), 3))
