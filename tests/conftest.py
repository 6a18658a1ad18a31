"""Tests never touch the network: the Hub libraries run offline, whatever the environment says."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
