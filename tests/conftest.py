"""Test-wide settings: one intra-op thread. The tensors here are tiny and CI has 2 cores, shared
by torch's pool and the fused kernels' OpenMP threads (which follow torch.get_num_threads())."""

import torch

torch.set_num_threads(1)
