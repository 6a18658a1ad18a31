"""What does distillation cost per training step, and what does the distilled student cost at inference?

    python benchmarks/step_cost.py                       # cpu preset: every method
    python benchmarks/step_cost.py --methods none liaf --rounds 5
    python benchmarks/step_cost.py --methods liaf 'liaf-bg=liaf:{"beta": 5.0}'   # a method with options
    python benchmarks/step_cost.py --preset gpu --methods liaf --compile   # liaf eager and compiled

Times, on one fixed batch of generated images and in one process (configurations interleaved round by
round, so machine noise hits them alike; the median round is reported):
- the plain student's training step (forward, loss, backward, gradient clipping, AdamW step),
- the teacher's forward alone (eval mode, no gradients), and its backbone and FPN alone (all that the methods
  comparing FPN maps need: the distillation step skips the teacher's head for them),
- the distillation step of each method (what `LIAFDistillationTrainer` runs: student step, teacher forward,
  the method's loss and its own parameters' updates),
and reports each distillation step against the floor no implementation can beat: student step + teacher
forward. Peak memory of each step is measured in a fresh subprocess per configuration: the peak of the bytes
held by tensors allocated during the steps, above what the models held before them (on a GPU
`torch.cuda.max_memory_allocated`, on the CPU the same from the profiler's record of allocations). Last, a
distilled student saved as users get it is reloaded and compared with a plain student: parameters and
inference latency.

With `--compile`, each method is also timed with its loss compiled (`Distiller.compile_losses`, what
`--compile_distiller` does in training), as `distill: <label> compiled`; it compiles in the untimed warm-up
steps. Its kernels are not counted: compiled code bypasses the dispatcher that counts them.

With `--profile`, each configuration is also profiled: how long the device was busy per step (on a GPU, a
share well under 1 of the step's time means the device waited for the host to launch kernels) and which
operations account for each method's device time beyond the floor's.

Models start from random weights: the step's cost does not depend on what the weights have learnt.
Prints tables and writes benchmarks/results/step_cost_<preset>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # _provenance, also when a test loads this file by path
from _provenance import provenance, write_result  # noqa: E402
from _step_cost_report import FLOOR, Measurements, report_table, result_rows  # noqa: E402
from liaf_hf import GFLConfig, GFLForObjectDetection, GFLImageProcessor  # noqa: E402
from liaf_hf.data.synthetic import SyntheticSpec, generate_scene  # noqa: E402
from liaf_hf.distillation import available_methods, build_distiller, parse_method_spec  # noqa: E402
from liaf_hf.trainer.distillation import DistillationModel  # noqa: E402

PRESETS = {
    # The settings of the demo and of distill_gain's cpu preset.
    "cpu": {"image_size": 128, "batch_size": 16, "channels": 64, "difficulty": "easy"},
    # distill_gain's gpu preset.
    "gpu": {"image_size": 256, "batch_size": 32, "channels": 128, "difficulty": "medium"},
}
TIMING = {"cpu": {"steps": 5, "rounds": 3}, "gpu": {"steps": 10, "rounds": 9}}
DEFAULT_METHODS = ["none", "mimic", "fgd", "pkd", "ld", "aid", "liaf", "liaf+ld"]
STUDENT_STEP, TEACHER_FORWARD = "student step", "teacher forward"
# The part of the teacher's forward that methods comparing FPN maps only run (`needs_teacher_head = False`).
TEACHER_FEATURES = "teacher backbone + FPN"
COMPILED = "compiled"  # suffix of the configurations with a compiled loss (--compile)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--methods", nargs="+", default=None, help="Methods or label=method:{json} variants.")
    parser.add_argument("--student_backbone", default="resnet18")
    parser.add_argument("--teacher_backbone", default="resnet50")
    parser.add_argument(
        "--steps", type=int, default=None, help="Timed steps per configuration and round (preset: cpu 5, gpu 10)."
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="Rounds over all configurations, median reported (cpu 3, gpu 9)."
    )
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps per configuration first.")
    parser.add_argument("--memory_steps", type=int, default=3, help="Steps per memory measurement.")
    parser.add_argument("--no_memory", action="store_true", help="Skip the memory subprocesses.")
    parser.add_argument(
        "--operations_only",
        action="store_true",
        help="Only count each configuration's operations, kernels and device waits (no timing, memory or "
        "inference): what a CPU can say about a GPU preset's cost.",
    )
    parser.add_argument(
        "--kernels_by_site",
        action="store_true",
        help="Also list each method's kernels beyond the floor's by the liaf_hf function that launched them.",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="Also profile each configuration: the device's busy time per step (on a GPU, the kernels' summed "
        "durations; against the step's time, how long the device waited for the host) and each method's "
        "device time beyond the floor's by operation.",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="Also time each method with its loss compiled by torch.compile (Distiller.compile_losses).",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=None, help="JSON file (default: results/step_cost_<preset>.json).")
    parser.add_argument("--measure_memory_of", default=None, help=argparse.SUPPRESS)  # internal: one config
    args = parser.parse_args(argv)
    if args.compile and args.operations_only:
        parser.error("--compile times compiled losses; their kernels cannot be counted (--operations_only).")
    for key, value in PRESETS[args.preset].items():
        setattr(args, key, value)
    # A GPU step of a few tens of milliseconds is bound by the host, whose noise spreads rounds by 20-40% on
    # the H200: LIAF-KD measured 1.31 times the floor over 3 rounds of 5 steps and 1.13 over 9 rounds of 10,
    # the same code. More rounds cost seconds there.
    timing = TIMING[args.preset]
    args.steps = args.steps if args.steps is not None else timing["steps"]
    args.rounds = args.rounds if args.rounds is not None else timing["rounds"]
    args.methods = args.methods or [m for m in DEFAULT_METHODS if all(p in available_methods() for p in m.split("+"))]
    args.output = args.output or str(ROOT / "benchmarks" / "results" / f"step_cost_{args.preset}.json")
    return args


# ------------------------------------------------------------------------------------------------- setup


def detector(backbone: str, args: argparse.Namespace, id2label: dict[int, str]) -> GFLForObjectDetection:
    """A GFL sized like the demo's: `channels`-wide FPN and head, two stacked convs."""
    config = GFLConfig(
        backbone=backbone,
        fpn_channels=args.channels,
        head_channels=args.channels,
        head_stacked_convs=2,
        id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
    )
    return GFLForObjectDetection(config)


def fixed_batch(args: argparse.Namespace, processor: GFLImageProcessor, spec: SyntheticSpec) -> dict:
    """`batch_size` generated images with their labels, processed and padded as the Trainer's collator does."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for index in range(args.batch_size):
        image, objects = generate_scene(rng, spec)
        images.append(image)
        annotations.append(
            {
                "image_id": index,
                "annotations": [
                    {"bbox": [x1, y1, x2 - x1, y2 - y1], "category_id": obj.category, "iscrowd": 0}
                    for obj in objects
                    for x1, y1, x2, y2 in [obj.box_xyxy]
                ],
            }
        )
    processed = processor(images=images, annotations=annotations, do_pad=False)
    padded = processor.pad(processed["pixel_values"])
    device = torch.device(args.device)
    labels = [{key: value.to(device) for key, value in label.items()} for label in processed["labels"]]
    return {
        "pixel_values": padded["pixel_values"].to(device),
        "pixel_mask": padded["pixel_mask"].to(device),
        "labels": labels,
    }


def training_step(module: torch.nn.Module, batch: dict) -> Callable[[], None]:
    """One optimisation step as the Trainer takes it (AdamW, gradient clipping at GFL's 35). The returned
    function's `forward_backward` attribute runs the forward and backward passes alone (for counting
    operations: the optimizer's are a few multi-tensor launches on a GPU)."""
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, weight_decay=1e-4)
    module.train()

    def forward_backward() -> None:
        module(**batch).loss.backward()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward_backward()
        torch.nn.utils.clip_grad_norm_(parameters, 35.0)
        optimizer.step()

    step.forward_backward = forward_backward
    return step


def build_configurations(args: argparse.Namespace) -> tuple[dict[str, Callable[[], None]], dict]:
    """Every timed configuration as a no-argument step function, plus what the inference check needs."""
    torch.manual_seed(0)
    spec = SyntheticSpec.preset(args.difficulty)
    id2label = dict(enumerate(spec.class_names))
    processor = GFLImageProcessor(size={"shortest_edge": args.image_size, "longest_edge": args.image_size})
    batch = fixed_batch(args, processor, spec)
    device = torch.device(args.device)
    initial_student = detector(args.student_backbone, args, id2label)
    teacher = detector(args.teacher_backbone, args, id2label).to(device).eval().requires_grad_(False)

    configurations: dict[str, Callable[[], None]] = {}
    student = copy.deepcopy(initial_student).to(device)
    configurations[STUDENT_STEP] = training_step(student, batch)

    @torch.no_grad()
    def teacher_forward() -> None:
        teacher(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])

    @torch.no_grad()
    def teacher_features() -> None:
        teacher.forward_features(batch["pixel_values"])

    teacher_forward.forward_backward = teacher_forward
    teacher_features.forward_backward = teacher_features
    configurations[TEACHER_FORWARD] = teacher_forward
    configurations[TEACHER_FEATURES] = teacher_features
    student_step = configurations[STUDENT_STEP]

    def floor_step() -> None:
        student_step()
        teacher_forward()

    def floor_forward_backward() -> None:
        student_step.forward_backward()
        teacher_forward()

    floor_step.forward_backward = floor_forward_backward
    configurations[FLOOR] = floor_step
    models = {}
    for spec in args.methods:
        label, method, options = parse_method_spec(spec)
        distiller = build_distiller(
            method, student_config=initial_student.config, teacher_config=teacher.config, **options
        )
        model = DistillationModel(student=copy.deepcopy(initial_student), teacher=teacher, distiller=distiller).to(
            device
        )
        models[label] = model
        configurations[f"distill: {label}"] = training_step(model, batch)
        if args.compile:
            compiled_distiller = copy.deepcopy(distiller)  # the same starting weights, and the same teacher
            compiled_distiller.compile_losses()
            compiled = DistillationModel(
                student=copy.deepcopy(initial_student), teacher=teacher, distiller=compiled_distiller
            ).to(device)
            step = training_step(compiled, batch)
            step.compiled = True
            configurations[f"distill: {label} {COMPILED}"] = step
    return configurations, {"batch": batch, "models": models, "student": student, "processor": processor}


# ------------------------------------------------------------------------------------------------ timing


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_configurations(configurations: dict[str, Callable[[], None]], args: argparse.Namespace) -> dict:
    """Median seconds per step of each configuration over `rounds` interleaved rounds."""
    for step in configurations.values():
        for _ in range(args.warmup):
            step()
    per_round: dict[str, list[float]] = {name: [] for name in configurations}
    for round_index in range(args.rounds):
        for name, step in configurations.items():
            synchronise(args.device)
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            synchronise(args.device)
            per_round[name].append((time.perf_counter() - started) / args.steps)
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    return {
        name: {"median_s": statistics.median(times), "rounds_s": [round(t, 4) for t in times]}
        for name, times in per_round.items()
    }


def _busy_time_by_operation(
    step: Callable[[], None], steps: int, device: str
) -> tuple[float, Counter[str], float | None]:
    """Seconds per step the device spent running `step`'s work, in all and by tensor operation, and on a GPU
    how many times per step the host waited for it (CUDA runtime synchronisations: values read back, and
    copies from pageable host memory, which PyTorch follows with a stream synchronisation).

    On a GPU: the kernels' durations (one stream, so they do not overlap), each credited to the operation
    that launched it; a step that takes longer than that kept the device waiting for the host. On the CPU
    the host is the device: the operations' own CPU time."""
    on_gpu = device.startswith("cuda")
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if on_gpu else [ProfilerActivity.CPU]
    step()  # the profiler's first step pays its own set-up
    synchronise(device)
    with profile(activities=activities) as recording:
        for _ in range(steps):
            step()
        synchronise(device)
    by_operation: Counter[str] = Counter()
    busy_us = 0.0
    synchronisations = 0
    for event in recording.events():
        if on_gpu and "Synchronize" in event.key:  # cudaStreamSynchronize, cudaDeviceSynchronize, ...
            synchronisations += 1
        if on_gpu:
            if event.device_type == torch.autograd.DeviceType.CPU:
                by_operation[event.key] += event.self_device_time_total
            elif not event.is_user_annotation:  # a kernel, copy or fill as the device ran it (not a range
                busy_us += event.self_device_time_total  # of `record_function`'s, which spans kernels)
        else:
            by_operation[event.key] += event.self_cpu_time_total
            busy_us += event.self_cpu_time_total
    per_step = 1e-6 / steps
    # Less the one synchronisation after the last step, which is the profile's, not the step's.
    waits = (synchronisations - 1) / steps if on_gpu else None
    return busy_us * per_step, Counter({key: us * per_step for key, us in by_operation.items() if us > 0}), waits


def profile_configurations(configurations: dict[str, Callable[[], None]], args: argparse.Namespace) -> dict:
    """Each configuration's device busy time per step, and for each distillation step its device time
    beyond the floor's by operation (the twelve largest differences): which operations a method adds."""
    profiles = {}
    for name, step in configurations.items():
        busy, by_operation, synchronisations = _busy_time_by_operation(step, args.steps, args.device)
        profiles[name] = {"busy_s": busy, "by_operation": by_operation, "synchronisations": synchronisations}
    floor_operations = profiles[FLOOR]["by_operation"]
    result = {}
    for name, measured in profiles.items():
        result[name] = {"busy_s_per_step": measured["busy_s"], "host_waits_per_step": measured["synchronisations"]}
        if name.startswith("distill: "):
            extra = Counter(measured["by_operation"])
            extra.subtract(floor_operations)
            result[name]["extra_s_by_operation"] = {key: seconds for key, seconds in extra.most_common(12)}
    return result


# Tensor operations that make the host wait for the device before it can go on (on a GPU): reading a value
# back, and everything whose output size depends on the data.
_WAITING_OPERATIONS = frozenset(
    {"_local_scalar_dense", "nonzero", "masked_select", "_unique", "_unique2", "unique_dim", "unique_consecutive"}
)
# Those that only allocate: no kernel runs.
_ALLOCATING_OPERATIONS = frozenset({"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided"})


def _is_view(func) -> bool:
    """True for operations that only make a new view of their input's storage (no kernel runs): their
    outputs alias an input without writing to it (`view`, `permute`, `detach`, ...)."""
    returns = func._schema.returns
    return bool(returns) and all(result.alias_info is not None and not result.alias_info.is_write for result in returns)


def _indexes_with_a_mask(func, args) -> bool:
    """Boolean-mask indexing (`x[mask]`, `x[mask] = y`): the output's size is the mask's count, so the host
    waits for the device to count it."""
    if func.overloadpacket.__name__ not in ("index", "index_put", "index_put_") or len(args) < 2:
        return False
    return any(isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8) for index in args[1] or ())


class _OperationCounter(TorchDispatchMode):
    """Counts the tensor operations (ATen calls, backward included) run while it is active: all of them,
    those that run a kernel (not views, not bare allocations), and those that make the host wait for the
    device (on a GPU: a value read back, a boolean mask's count)."""

    def __init__(self, *, by_site: bool = False) -> None:
        super().__init__()
        self.operations = 0
        self.kernels = 0
        self.device_waits = 0
        # With `by_site`, kernels per calling function of liaf_hf (slow: a stack walk per operation).
        self.kernels_by_site: Counter[str] | None = Counter() if by_site else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.operations += 1
        name = func.overloadpacket.__name__
        if not _is_view(func) and name not in _ALLOCATING_OPERATIONS:
            self.kernels += 1
            if self.kernels_by_site is not None:
                self.kernels_by_site[_calling_site()] += 1
        if name in _WAITING_OPERATIONS or _indexes_with_a_mask(func, args):
            self.device_waits += 1
        return func(*args, **(kwargs or {}))


# The site of kernels launched by no liaf_hf function: in a step, those of the backward pass (the autograd
# engine runs them outside any Python function of ours, custom `backward`s aside).
OUTSIDE_THE_LIBRARY = "backward pass (outside liaf_hf)"


def _calling_site() -> str:
    """The innermost liaf_hf function on the stack as `file.py:function`, or `OUTSIDE_THE_LIBRARY`."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if f"{os.sep}liaf_hf{os.sep}" in path:
            return f"{os.path.basename(path)}:{frame.f_code.co_name}"
        frame = frame.f_back
    return OUTSIDE_THE_LIBRARY


def kernels_by_site(configurations: dict[str, Callable[[], None]], names: list[str]) -> dict[str, dict[str, int]]:
    """For each configuration in `names`, its kernels per calling site beyond the floor's (sites with more
    kernels than in the floor's step, largest first): where a method's extra launches come from."""
    sites = {}
    for name in [FLOOR, *names]:
        with _OperationCounter(by_site=True) as counter:
            configurations[name].forward_backward()
        sites[name] = counter.kernels_by_site
    return {name: dict((sites[name] - sites[FLOOR]).most_common()) for name in names}


def count_operations(configurations: dict[str, Callable[[], None]]) -> dict[str, dict[str, int]]:
    """Tensor operations, kernels and device waits in each configuration's forward and backward passes.

    On a GPU each kernel is a launch, and at these sizes launches rather than arithmetic set the step's time
    (the gpu preset on an H200: 0.091 s for the floor's 6,913 operations before the batched assignment);
    each wait stops the host from queueing work ahead of the device. So the counts are the step's GPU cost
    as a CPU can measure it. A tensor read back only by a CPU check (e.g. `one_hot`'s range check, skipped
    on a GPU) counts as a wait here too."""
    counts = {}
    for name, step in configurations.items():
        if getattr(step, "compiled", False):
            continue
        with _OperationCounter() as counter:
            step.forward_backward()
        counts[name] = {
            "operations": counter.operations,
            "kernels": counter.kernels,
            "device_waits": counter.device_waits,
        }
    return counts


# ------------------------------------------------------------------------------------------------ memory


def _peak_allocated_bytes_on_cpu(step: Callable[[], None], steps: int) -> int:
    """The CPU's counterpart of `torch.cuda.max_memory_allocated`: the peak of the bytes held by tensors
    allocated while `step` runs `steps` times, from the profiler's record of every allocation and free (at
    operator granularity). Unlike the process's resident set, it does not depend on what the allocator
    keeps cached, so it shows which tensors live at the same time, as the GPU's figure does."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recording:
        for _ in range(steps):
            step()
    held = peak = 0
    for event in sorted(recording.events(), key=lambda event: event.time_range.start):
        held += event.self_cpu_memory_usage
        peak = max(peak, held)
    return peak


def measure_memory_here(args: argparse.Namespace) -> dict:
    """Peak extra memory of `args.measure_memory_of`'s steps in this (fresh) process."""
    configurations, _ = build_configurations(args)
    step = configurations[args.measure_memory_of]
    # One untimed step first: the optimizer allocates its state at its first step and holds it from then on,
    # the same for every configuration; counted, it can hide the activations' peak that tells them apart.
    step()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(args.memory_steps):
            step()
        torch.cuda.synchronize()
        return {"peak_extra_bytes": torch.cuda.max_memory_allocated() - baseline, "kind": "cuda allocated"}
    peak = _peak_allocated_bytes_on_cpu(step, args.memory_steps)
    return {"peak_extra_bytes": peak, "kind": "cpu allocated (profiler)"}


def measure_memory(name: str, argv: list[str]) -> dict:
    """Run `measure_memory_here` for one configuration in a fresh interpreter."""
    with tempfile.NamedTemporaryFile("r", suffix=".json") as result:
        command = [sys.executable, __file__, *argv, "--measure_memory_of", name, "--output", result.name]
        # The profiler writes start/stop notices to stderr; shown only if the measurement fails.
        finished = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if finished.returncode != 0:
            raise RuntimeError(f"Measuring the memory of {name!r} failed:\n{finished.stderr}")
        return json.loads(Path(result.name).read_text())


# --------------------------------------------------------------------------------------------- inference


@torch.no_grad()
def inference_latency(models: dict[str, GFLForObjectDetection], batch: dict, processor, args) -> dict:
    """Median seconds per batch (forward and post-processing) of each model, interleaved over rounds."""
    target_sizes = [label["orig_size"].tolist() for label in batch["labels"]]
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.eval()(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])  # warm-up
    for _ in range(args.rounds):
        for name, model in models.items():
            synchronise(args.device)
            started = time.perf_counter()
            for _ in range(args.steps):
                outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
                processor.post_process_object_detection(outputs, target_sizes=target_sizes)
            synchronise(args.device)
            times[name].append((time.perf_counter() - started) / args.steps)
    return {name: statistics.median(values) for name, values in times.items()}


def saved_student_comparison(context: dict, args: argparse.Namespace) -> dict:
    """Save the plain student and a distilled one as users get them, reload both, and compare."""
    distilled_method = "liaf" if "liaf" in context["models"] else next(iter(context["models"]))
    with tempfile.TemporaryDirectory() as folder:
        plain_dir, distilled_dir = Path(folder) / "plain", Path(folder) / "distilled"
        context["student"].save_pretrained(plain_dir)
        context["models"][distilled_method].student.save_pretrained(distilled_dir)
        plain = GFLForObjectDetection.from_pretrained(plain_dir).to(args.device)
        distilled = GFLForObjectDetection.from_pretrained(distilled_dir).to(args.device)
        files = {
            "plain": sorted(p.name for p in plain_dir.iterdir()),
            "distilled": sorted(p.name for p in distilled_dir.iterdir()),
        }
        same_tensors = plain.state_dict().keys() == distilled.state_dict().keys()
    latency = inference_latency({"plain": plain, "distilled": distilled}, context["batch"], context["processor"], args)
    return {
        "distilled_method": distilled_method,
        "parameters": {
            "plain": sum(p.numel() for p in plain.parameters()),
            "distilled": sum(p.numel() for p in distilled.parameters()),
        },
        "same_tensor_names": same_tensors,
        "saved_files": files,
        "latency_s_per_batch": latency,
    }


# -------------------------------------------------------------------------------------------------- main


def measure(args: argparse.Namespace, argv: list[str]) -> tuple[list[str], Measurements]:
    """Every configuration's step measured as `args` asks: the configurations' names and their measurements."""
    configurations, context = build_configurations(args)
    measured = Measurements(timings=None, operations={})
    if args.operations_only:
        for step in configurations.values():  # caches (anchor points) filled as in a timed step
            step.forward_backward()
    else:
        timings = time_configurations(configurations, args)
        measured.timings = timings
        measured.floor = timings[STUDENT_STEP]["median_s"] + timings[TEACHER_FORWARD]["median_s"]
        measured.feature_floor = timings[STUDENT_STEP]["median_s"] + timings[TEACHER_FEATURES]["median_s"]
    measured.operations = count_operations(configurations)
    if args.kernels_by_site:
        distilling = [name for name in configurations if name.startswith("distill: ") and name in measured.operations]
        measured.sites = kernels_by_site(configurations, distilling)
    if args.profile and not args.operations_only:
        measured.profiles = profile_configurations(configurations, args)
    if not args.no_memory and not args.operations_only:
        for name in configurations:
            measured.memory[name] = measure_memory(name, argv)
            print(f"memory of {name}: {measured.memory[name]['peak_extra_bytes'] / 2**20:.0f} MiB", flush=True)
    measured.inference = None if args.operations_only else saved_student_comparison(context, args)
    measured.features_only = {
        name
        for label, model in context["models"].items()
        if model.distiller.needs_teacher and not model.distiller.needs_teacher_head
        for name in (f"distill: {label}", f"distill: {label} {COMPILED}")
    }
    return list(configurations), measured


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    if args.measure_memory_of:
        Path(args.output).write_text(json.dumps(measure_memory_here(args)))
        return {}
    names, measured = measure(args, argv)
    rows = result_rows(names, measured)
    table = report_table(rows, measured, args)
    print(table)
    result = {
        "provenance": provenance(),
        "command": shlex.join(["python", "benchmarks/step_cost.py", *argv]),
        "date": date.today().isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "measure_memory_of")},
        "floor_seconds_per_step": measured.floor,
        "feature_floor_seconds_per_step": measured.feature_floor,
        "rows": rows,
        "inference": measured.inference,
        "kernels_by_site_beyond_floor": measured.sites,
        "table": table,
    }
    write_result(args.output, result)
    return result


if __name__ == "__main__":
    main()
