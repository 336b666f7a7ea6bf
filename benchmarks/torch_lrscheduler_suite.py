"""Run PyTorch's own scheduler tests (test/optim/test_lrscheduler.py) against torchstep.

PyTorch's file is not part of this repository and this script fetches nothing: get the file from
PyTorch's repository yourself (the version matching torch 2.13) and pass its path::

    python benchmarks/torch_lrscheduler_suite.py /tmp/pt_tests/test_lrscheduler.py

It runs the file twice with pytest, in a temporary directory: unmodified (torch's schedulers, to
know which tests fail with torch itself) and with its imports rewritten to torchstep's
schedulers, SWALR and optimizers (``from torch.optim.lr_scheduler import ...`` ->
``torchstep.optim.lr_scheduler``, ``SGD``/``Adam``/``Rprop``/``AdamW`` -> ``torchstep.optim``);
every test body stays as PyTorch wrote it. It prints both pass counts. Needs ``expecttest``
(imported by ``torch.testing._internal``; in the ``test`` extra).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

REWRITES = [
    (r"from torch\.optim import Adam, Rprop, SGD", "from torchstep.optim import Adam, Rprop, SGD"),
    (r"from torch\.optim\.lr_scheduler import \(", "from torchstep.optim.lr_scheduler import ("),
    (r"from torch\.optim\.swa_utils import SWALR", "from torchstep.optim.swa_utils import SWALR"),
    (r"torch\.optim\.lr_scheduler\.", "torchstep.optim.lr_scheduler."),
    (r"torch\.optim\.AdamW\(", "torchstep.optim.AdamW("),
]


def rewrite(text: str) -> str:
    """PyTorch's test source with torch's schedulers and optimizers swapped for torchstep's."""
    for pattern, replacement in REWRITES:
        text, count = re.subn(pattern, replacement, text)
        if count == 0:
            raise SystemExit(f"pattern not found (has the file changed?): {pattern}")
    imports = "import torch\nimport torchstep.optim\nimport torchstep.optim.lr_scheduler\n"
    return text.replace("import torch\n", imports, 1)


def run(path: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)],
                          capture_output=True, text=True, cwd=path.parent)
    lines = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return "\n".join(lines + [done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr])


def main() -> None:
    source = Path(sys.argv[1]).read_text()
    with tempfile.TemporaryDirectory() as tmp:
        original, ours = Path(tmp, "test_lrscheduler.py"), Path(tmp, "test_lrscheduler_torchstep.py")
        original.write_text(source)
        ours.write_text(rewrite(source))
        print("torch 2.13 itself:\n" + run(original))
        print("\ntorchstep:\n" + run(ours))


if __name__ == "__main__":
    main()
