"""What every test shares.

Tests never touch the network: the Hub libraries run offline, whatever the environment says.

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


import pytest  # noqa: E402

from tiny import tiny_detector  # noqa: E402


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """A generated shapes set (16 training and 4 validation images) as (train, val, id2label), generated once per
    session. Test files whose data must differ define their own `shapes`."""
    from liaf_hf.data import label_maps, load_coco_detection
    from liaf_hf.data.synthetic import generate_coco_dataset

    root = generate_coco_dataset(tmp_path_factory.mktemp("shapes"), num_train=16, num_val=4, seed=5)
    train, val = load_coco_detection(root, "train"), load_coco_detection(root, "val")
    return train, val, label_maps(train)[0]


@pytest.fixture(scope="session")
def teacher_dir(shapes, tmp_path_factory):
    """A saved teacher for `shapes` (ResNet-34, 48 channels: wider than `tiny_detector`'s students), saved once per
    session. Its weights are random: the tests distil from it, they do not measure what it teaches."""
    _, _, id2label = shapes
    directory = tmp_path_factory.mktemp("teacher")
    tiny_detector(id2label, backbone="resnet34", channels=48, seed=1).save_pretrained(directory)
    return directory
