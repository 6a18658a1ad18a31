"""Loss normalisers are averaged over processes, so two processes on half batches train like one."""

import subprocess
import sys
import textwrap

import torch

WORKER = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from liaf_hf import GFLConfig, GFLForObjectDetection
    rank, world, init_file, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.manual_seed(0)
    # ConvNeXt (LayerNorm) and the GroupNorm head compute each image alone, so only the loss normalisers
    # can make the two-process gradient differ from the one-process one. prior_prob 0.5 keeps the box-loss
    # normaliser (a sum of predicted qualities) above GFL's floor of 1, below which the clamp, like
    # mmdetection's, makes per-process normalisation differ by design.
    config = GFLConfig(backbone="convnext_atto", fpn_channels=16, head_channels=16, head_stacked_convs=1,
                       head_norm_groups=4, prior_prob=0.5, id2label={0: "a", 1: "b"})
    model = GFLForObjectDetection(config)
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(4, 3, 64, 64, generator=generator)
    labels = [
        {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])},
        {"class_labels": torch.tensor([1, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.3, 0.4], [0.7, 0.7, 0.2, 0.2]])},
        {"class_labels": torch.tensor([1, 1, 0]),
         "boxes": torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.6, 0.3, 0.3, 0.3], [0.5, 0.8, 0.4, 0.2]])},
        {"class_labels": torch.tensor([], dtype=torch.long), "boxes": torch.zeros(0, 4)},
    ]
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
        half = slice(2 * rank, 2 * rank + 2)
        pixels, labels = pixels[half], labels[half]
    model(pixel_values=pixels, labels=labels).loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.head.parameters()])
    if world > 1:
        dist.all_reduce(grads)
        grads /= world  # what DistributedDataParallel does
        dist.destroy_process_group()
    if rank == 0:
        torch.save(grads, out)
    """
)


def run_workers(tmp_path, world: int) -> torch.Tensor:
    out = tmp_path / f"grads_{world}.pt"
    init_file = tmp_path / f"init_{world}"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(rank), str(world), str(init_file), str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, stderr[-2000:]
    return torch.load(out, weights_only=True)


def test_two_processes_give_the_one_process_gradient(tmp_path):
    single = run_workers(tmp_path, 1)
    double = run_workers(tmp_path, 2)
    assert single.abs().sum() > 0
    torch.testing.assert_close(double, single, rtol=1e-4, atol=1e-6)
