"""The fused default path under adversarial use (see ``adversarial_cases.py``): every case runs in
a fresh process with an empty private kernel cache, so a crash fails the test instead of ending
the test run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adversarial_cases import CASES

HERE = Path(__file__).parent


@pytest.mark.parametrize("name", sorted(CASES))
def test_adversarial_case(name, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "TORCHSTEP_CFLAGS", "TORCHSTEP_BACKEND")}
    env.update(TORCHSTEP_CACHE=str(tmp_path / "cache"), CASE_TMP=str(tmp_path), PYTHONPATH=str(HERE))
    out = subprocess.run([sys.executable, str(HERE / "adversarial_cases.py"), name], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"exit status {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    assert f"ok {name}" in out.stdout
