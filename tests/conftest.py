"""Test-wide settings: one thread (two OpenMP threads on two busy cores can run 100x slower)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
