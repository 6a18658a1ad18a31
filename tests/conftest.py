"""Tests never touch the network: the Hub libraries run offline, whatever the environment says.

Under pytest-xdist each worker gets one thread: torch otherwise starts a thread per core in every worker, and two
workers on two cores then oversubscribe them (their threads spin waiting for each other), which slows the
suite several-fold. Subprocesses a test starts (accelerate's launcher, the scripts) inherit the setting.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
