"""The one interface every distillation method implements, and the registry `--method` reads.

A method is an `nn.Module` (it may own trainable parts: align convs, selectors) that takes the
student's and the teacher's detector outputs and the batch's instances, and returns named losses (added
to the student's loss) and named statistics (logged only). The trainer asks the registry for a method
by name and knows none of them; a method says what else it needs through class flags (`needs_teacher`,
`needs_teacher_head`, `needs_teacher_loss`, `needs_positive_mask`), so the trainer computes nothing a method
does not use.

Methods combine with "+": `build_distiller("liaf+ld", ...)` builds a `CompositeDistiller` whose losses are
the union of its parts' losses. Its options are given per part, keyed by the part's name, e.g.
`--method liaf+ld --method_options '{"liaf": {"alpha": 2.0}, "ld": {"weight": 0.5}}'`; a part without an
entry keeps its defaults.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.gfl.configuration_gfl import GFLConfig
from ..models.gfl.modeling_gfl import GFLObjectDetectionOutput


@dataclass
class DistillationBatch:
    """What a distiller knows about the batch besides the two models' outputs.

    Attributes:
        boxes: per image, (n_i, 4) ground-truth boxes, xyxy in pixels of the padded input.
        class_labels: per image, (n_i,) class indices.
        ignore_boxes: per image, (k_i, 4) regions to ignore, same units as `boxes`.
        input_size: (height, width) of the padded input.
        valid_sizes: (B, 2) unpadded (height, width) of each image.
        strides: stride of each FPN level, finest first.
        progress: training progress in [0, 1] (step / total steps).
        teacher_strides: stride of each of the teacher's FPN levels, finest first; None when not known.
        positive_mask: (B, A) bool, the anchors the student's ATSS assignment makes positive, over every
            level's cells (the order of `GFLObjectDetectionOutput.logits`: levels finest first, each row by
            row). Filled only for methods with `needs_positive_mask`; None otherwise.
        image_ids: each image's id in its dataset (the labels' `image_id`). Filled only for methods with
            `needs_image_ids`; None otherwise.
    """

    boxes: list[torch.Tensor]
    class_labels: list[torch.Tensor]
    ignore_boxes: list[torch.Tensor]
    input_size: tuple[int, int]
    valid_sizes: torch.Tensor
    strides: list[int]
    progress: float = 0.0
    teacher_strides: list[int] | None = None
    positive_mask: torch.Tensor | None = None
    image_ids: list[int] | None = None


@dataclass
class DistillationResult:
    """`losses` are already weighted and are summed into the training loss; `stats` are detached
    scalars for logging."""

    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class Distiller(nn.Module):
    """Base class of distillation methods."""

    #: False for methods that never look at the teacher, so the trainer can skip its forward pass.
    needs_teacher: bool = True
    #: False for methods that read only the teacher's `fpn_features`: the trainer then runs the teacher's
    #: backbone and FPN alone (`GFLForObjectDetection.forward_features`), and the other fields of the teacher's
    #: output are None. Skipping the head saves its launches and keeps its outputs out of the step's peak memory.
    needs_teacher_head: bool = True
    #: True for methods that weigh by the teacher's own loss on the batch: the trainer then runs the teacher
    #: with the batch's labels, so `teacher.loss` and `teacher.loss_dict` are filled.
    needs_teacher_loss: bool = False
    #: True for methods that read `DistillationBatch.positive_mask` (the student's positive anchors).
    needs_positive_mask: bool = False
    #: True for methods that read the teacher's `instance_losses` and `instance_quality` (its loss and
    #: correctness on each ground-truth instance): the trainer then runs the teacher's head and loss with them.
    needs_teacher_instance_losses: bool = False
    #: True for methods that read the student's `instance_losses` and `instance_quality`.
    needs_student_instance_losses: bool = False
    #: True for methods that read `DistillationBatch.image_ids`.
    needs_image_ids: bool = False

    def forward(
        self, *, student: GFLObjectDetectionOutput, teacher: GFLObjectDetectionOutput, batch: DistillationBatch
    ) -> DistillationResult:
        raise NotImplementedError

    #: The method that `compile_losses` compiles instead of the whole forward: for a method whose forward
    #: first turns the batch's lists of boxes into tensors, since the compiled code would otherwise
    #: specialise on every image's instance count and compile anew for nearly every batch.
    compiled_part: str | None = None

    def compile_losses(self, **compile_options) -> None:
        """Compile the method's tensor work with `torch.compile(**compile_options)`, in place (the state dict
        keeps its keys): the whole forward, or the method named by `compiled_part`. On a GPU this fuses the
        loss's many small operations into a few kernels, where launching them, not computing them, sets the
        step's time. The first batches compile (seconds to a minute each); batches whose instance counts
        differ reuse the code once those sizes are marked dynamic, after one or two recompilations."""
        if self.compiled_part is None:
            self.compile(**compile_options)
        else:
            setattr(self, self.compiled_part, torch.compile(getattr(self, self.compiled_part), **compile_options))


DistillerFactory = Callable[..., Distiller]
#: Joins registered method names into a combined method: "liaf+ld".
COMBINE_SEPARATOR = "+"
_REGISTRY: dict[str, DistillerFactory] = {}


def register_distiller(name: str) -> Callable[[DistillerFactory], DistillerFactory]:
    """Class decorator: make a method available as `--method <name>`. The factory is called as
    `factory(student_config=..., teacher_config=..., **options)`."""
    if COMBINE_SEPARATOR in name:
        raise ValueError(f"A method name cannot contain {COMBINE_SEPARATOR!r}, which combines methods: {name!r}.")

    def decorate(factory: DistillerFactory) -> DistillerFactory:
        if name in _REGISTRY:
            raise ValueError(f"A distillation method named {name!r} is already registered.")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def method_parts(name: str) -> list[str]:
    """The registered methods that `name` names: `"liaf+ld"` -> `["liaf", "ld"]`, `"liaf"` -> `["liaf"]`.

    Raises ValueError for an unknown, empty or repeated part.
    """
    parts = [part.strip() for part in name.split(COMBINE_SEPARATOR)]
    unknown = [part for part in parts if part not in _REGISTRY]
    if unknown:
        raise ValueError(
            f"Unknown distillation method {', '.join(repr(part) for part in unknown)} in {name!r}; available: "
            f"{available_methods()}, combined with {COMBINE_SEPARATOR!r} (e.g. 'liaf+ld')."
        )
    if len(set(parts)) != len(parts):
        raise ValueError(f"Distillation method {name!r} names a part more than once.")
    return parts


#: What every factory receives besides the options.
_PAIR_ARGUMENTS = ("student_config", "teacher_config")


def method_settings(name: str, options: dict | None = None) -> dict:
    """Every option of method `name` as `build_distiller(name, **options)` would use it: the constructor's
    defaults updated with `options` (per part for a combined method: `{"liaf": {...}, "ld": {...}}`).

    What a run records, so its settings stay known when a default changes later.
    """
    options = dict(options or {})
    parts = method_parts(name)
    if len(parts) > 1:
        return {part: method_settings(part, options.get(part, {})) for part in parts}
    defaults = {
        option: parameter.default
        for option, parameter in _option_parameters(parts[0]).items()
        if parameter.default is not inspect.Parameter.empty
    }
    return {**defaults, **options}


def _option_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The options of the registered method `name` (not a combined one): its factory's keyword parameters
    besides the student and teacher configs, with their defaults and (evaluated) annotations."""
    factory = _REGISTRY[name]
    try:
        signature = inspect.signature(factory, eval_str=True)
    except (NameError, TypeError, SyntaxError):  # an annotation that does not evaluate here: no types known
        signature = inspect.signature(factory)
    return {
        parameter.name: parameter
        for parameter in signature.parameters.values()
        if parameter.name not in _PAIR_ARGUMENTS
        and parameter.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }


def check_method_options(name: str, options: dict) -> None:
    """Refuse options that method `name` does not have or whose values are not of the type its constructor
    declares, before anything is built or loaded (a run checks its `--method_options` at parse time).

    A combined method's options are given per part, keyed by the part's name (`{"liaf": {...}, "ld": {...}}`).

    Raises:
        ValueError: naming the method, the option, the method's options with their defaults, and the type
            expected.
    """
    parts = method_parts(name)
    if not isinstance(options, dict):
        raise ValueError(f"The options of method {name!r} must be a JSON object (a dict), got {options!r}.")
    if len(parts) == 1:
        per_part = {parts[0]: options}
    else:
        misplaced = sorted(set(options) - set(parts))
        unknown_in_parts = [
            f"{part}.{key}"
            for part in parts
            if isinstance(options.get(part), dict)
            for key in sorted(set(options[part]) - set(_option_parameters(part)))
        ]
        if misplaced:
            raise ValueError(
                f"{name!r} has no options {misplaced + unknown_in_parts}: the options of a combined method are "
                f"given per part, keyed by part name {parts}, e.g. {{{parts[0]!r}: {{...}}}}. Its options: "
                f"{method_settings(name)}."
            )
        not_dicts = sorted(part for part, part_options in options.items() if not isinstance(part_options, dict))
        if not_dicts:
            raise ValueError(
                f"The options of parts {not_dicts} of {name!r} must be dicts of keyword options, keyed by option "
                f"name, e.g. {{{not_dicts[0]!r}: {{...}}}}."
            )
        per_part = {part: options.get(part, {}) for part in parts}
    for part, part_options in per_part.items():
        known = _option_parameters(part)
        takes_any = any(
            parameter.kind is inspect.Parameter.VAR_KEYWORD
            for parameter in inspect.signature(_REGISTRY[part]).parameters.values()
        )
        unknown = sorted(set(part_options) - set(known))
        if unknown and not takes_any:
            raise ValueError(
                f"{part!r} has no options {unknown}; its options (with their defaults): {method_settings(part)}."
            )
        for key, value in part_options.items():
            parameter = known.get(key)
            if parameter is None:  # taken by a factory's **options, which says nothing of its type
                continue
            expected = parameter.annotation
            if expected is inspect.Parameter.empty or isinstance(expected, str):
                # No usable annotation: the default's type, when there is one.
                default = parameter.default
                expected = type(default) if default not in (None, inspect.Parameter.empty) else None
            if expected is not None and not _accepts(expected, value):
                default = "" if parameter.default is inspect.Parameter.empty else f" (default {parameter.default!r})"
                raise ValueError(
                    f"Option {key!r} of method {part!r} must be {_describe(expected)}{default}, got {value!r} "
                    f"({_describe(type(value))})."
                )


def _accepts(expected, value) -> bool:
    """Whether `value` (as JSON gives it) is of the annotated type `expected`; True for types not checked."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(option, value) for option in typing.get_args(expected))
    if origin is typing.Literal:
        return value in typing.get_args(expected)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:  # an integer is a number too, as Python's float annotations mean
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    if origin in (list, tuple) or expected in (list, tuple):  # JSON has arrays only
        return isinstance(value, (list, tuple))
    if origin is dict or expected is dict:
        return isinstance(value, dict)
    return True


def _describe(expected) -> str:
    """A type in the words of the JSON a user writes: 'a number', 'true or false', 'a string or null'."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(expected))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(option) for option in typing.get_args(expected))
    names = {
        type(None): "null",
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        tuple: "an array",
        dict: "an object",
    }
    return names.get(origin or expected, getattr(expected, "__name__", str(expected)))


def parse_method_spec(spec: str) -> tuple[str, str, dict]:
    """A method as a command line names it, with options: `"liaf"` -> `("liaf", "liaf", {})`, and
    `'liaf-bg=liaf:{"beta": 5.0}'` -> `("liaf-bg", "liaf", {"beta": 5.0})`: a label, the method and its
    options as a JSON object (per part for a combined method, as `build_distiller` takes them).

    Raises ValueError naming the spec for an unknown method, options that are not a JSON object, or an option
    the method does not have.
    """
    if "=" not in spec:
        method_parts(spec)
        return spec, spec, {}
    label, rest = spec.split("=", 1)
    method, _, text = rest.partition(":")
    method_parts(method)  # an unknown method is named before its options are read
    try:
        options = json.loads(text) if text else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"Method spec {spec!r}: the options after {method + ':'!r} are not JSON ({error}).") from None
    if not isinstance(options, dict):
        raise ValueError(f"Method spec {spec!r}: the options must be a JSON object, got {type(options).__name__}.")
    try:
        check_method_options(method, options)
    except ValueError as error:
        raise ValueError(f"Method spec {spec!r}: {error}") from None
    return label, method, options


def build_distiller(name: str, *, student_config: GFLConfig, teacher_config: GFLConfig, **options) -> Distiller:
    """The distiller registered under `name`, built for this student/teacher pair.

    A combined name (`"liaf+ld"`) builds a `CompositeDistiller`; its `options` then map each part's name to
    that part's options (`liaf={"alpha": 2.0}, ld={"weight": 0.5}`), and a part left out keeps its defaults.
    """
    parts = method_parts(name)
    check_method_options(name, options)
    if len(parts) == 1:
        return _REGISTRY[parts[0]](student_config=student_config, teacher_config=teacher_config, **options)
    return CompositeDistiller(
        parts={
            part: _REGISTRY[part](student_config=student_config, teacher_config=teacher_config, **options.get(part, {}))
            for part in parts
        }
    )


class CompositeDistiller(Distiller):
    """Several methods at once (`--method liaf+ld`): every part sees the same outputs and batch, and the
    result is the union of their losses and statistics.

    Each method already names its losses after itself (`loss_liaf`, `loss_ld`, ...), so the keys stay as
    the parts give them and each part's weight is its own option; two parts giving the same key is an
    error rather than a silent overwrite. The flags are the union of the parts' needs.

    Args:
        parts: the built methods, keyed by their registered names (the keys of the state dict's
            `parts.<name>.` entries).
    """

    def __init__(self, *, parts: dict[str, Distiller]) -> None:
        super().__init__()
        if len(parts) < 2:
            raise ValueError(f"A combined method needs at least two parts, got {list(parts)}.")
        self.parts = nn.ModuleDict(parts)
        self.needs_teacher = any(part.needs_teacher for part in parts.values())
        self.needs_teacher_head = any(part.needs_teacher_head for part in parts.values())
        self.needs_teacher_loss = any(part.needs_teacher_loss for part in parts.values())
        self.needs_positive_mask = any(part.needs_positive_mask for part in parts.values())
        self.needs_teacher_instance_losses = any(part.needs_teacher_instance_losses for part in parts.values())
        self.needs_student_instance_losses = any(part.needs_student_instance_losses for part in parts.values())
        self.needs_image_ids = any(part.needs_image_ids for part in parts.values())

    def compile_losses(self, **compile_options) -> None:
        for part in self.parts.values():
            part.compile_losses(**compile_options)

    def forward(
        self, *, student: GFLObjectDetectionOutput, teacher: GFLObjectDetectionOutput, batch: DistillationBatch
    ) -> DistillationResult:
        combined = DistillationResult()
        source: dict[str, str] = {}
        for name, part in self.parts.items():
            result = part(student=student, teacher=teacher, batch=batch)
            for kind, values, merged in (
                ("loss", result.losses, combined.losses),
                ("statistic", result.stats, combined.stats),
            ):
                for key, value in values.items():
                    if key in merged:
                        raise ValueError(f"Parts {source[key]!r} and {name!r} both report the {kind} {key!r}.")
                    merged[key] = value
                    source[key] = name
        return combined


def zero_with_graph(*tensors: torch.Tensor) -> torch.Tensor:
    """A zero loss that still reaches every given tensor, so DDP sees a gradient for every parameter."""
    return sum(tensor.sum() for tensor in tensors) * 0.0


def check_pair(method: str, student_config: GFLConfig, teacher_config: GFLConfig) -> None:
    """Refuse a student/teacher pair that `method` cannot compare level by level and class by class."""
    if student_config.num_fpn_levels != teacher_config.num_fpn_levels:
        raise ValueError(
            f"{method} distillation needs as many FPN levels in the student as in the teacher: student "
            f"num_fpn_levels={student_config.num_fpn_levels}, teacher num_fpn_levels="
            f"{teacher_config.num_fpn_levels}."
        )
    student_labels = {int(key): value for key, value in student_config.id2label.items()}
    teacher_labels = {int(key): value for key, value in teacher_config.id2label.items()}
    if student_labels != teacher_labels:
        raise ValueError(
            f"{method} distillation needs the same label set in the student and the teacher: student "
            f"id2label={student_labels}, teacher id2label={teacher_labels}."
        )


@register_distiller("none")
class NoDistillation(Distiller):
    """The student trains alone; the teacher is not even run."""

    needs_teacher = False

    def __init__(self, *, student_config: GFLConfig, teacher_config: GFLConfig | None = None) -> None:
        super().__init__()

    def forward(self, *, student, teacher, batch) -> DistillationResult:
        return DistillationResult()
