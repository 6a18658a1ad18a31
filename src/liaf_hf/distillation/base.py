"""The one interface every distillation method implements, and the registry `--method` reads.

A method is an `nn.Module` (it may own trainable parts: align convs, selectors) that takes the
student's and the teacher's detector outputs and the batch's instances, and returns named losses (added
to the student's loss) and named statistics (logged only). Its options are a frozen dataclass, its
`config_class` (`MimicConfig`, `LIAFConfig`, ...): defaults, types and checks in one place; the command line's
JSON (`--method_options`) becomes that config at the edge (`method_config`), and a run records it. The trainer
asks the registry for a method by name and knows none of them; a method says what else it needs through class
flags (`needs_teacher`, `needs_teacher_head`, `needs_teacher_loss`, `needs_positive_mask`,
`needs_held_out_directions`, ...), so the trainer
computes nothing a method does not use, and what other parts of the library show of it through class
attributes (`description` and `reference` for the model card, `selects_instances` for the selector pictures).

Methods combine with "+": `build_distiller("liaf+ld", ...)` builds a `CompositeDistiller` whose losses are
the union of its parts' losses. Its options are given per part, keyed by the part's name, e.g.
`--method liaf+ld --method_options '{"liaf": {"alpha": 2.0}, "ld": {"weight": 0.5}}'`; a part without an
entry keeps its defaults.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

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
        held_out_directions: per level, (B, C_S, H_l, W_l): how a step for the student's detection loss on the
            other half of the batch moves the student's FPN maps on each image (J v / |v|, see
            `liaf_hf.trainer._held_out`). Filled only for methods with `needs_held_out_directions`; None
            otherwise.
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
    held_out_directions: tuple[torch.Tensor, ...] | None = None


@dataclass
class DistillationResult:
    """`losses` are already weighted and are summed into the training loss; `stats` are detached
    scalars for logging."""

    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodConfig:
    """Base of the methods' option dataclasses: each field is an option (`--method_options` key) with its type,
    default and docstring; `__post_init__` checks values the type does not. Frozen, so a built method's options
    cannot drift from what its run recorded."""

    def __post_init__(self) -> None:
        # The type of a field that names a choice (a Literal) is a check a dataclass does not make itself.
        for option, expected in typing.get_type_hints(type(self)).items():
            if typing.get_origin(expected) is typing.Literal and getattr(self, option) not in typing.get_args(expected):
                raise ValueError(f"{option} must be one of {typing.get_args(expected)}, got {getattr(self, option)!r}.")

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None, *, method: str) -> MethodConfig:
        """The config holding `options` (as JSON gives them: numbers, strings, lists), every other option at
        its default.

        Raises:
            ValueError: naming `method`, the option and what it takes, for an unknown option, a value of the
                wrong type, or a value the config's checks refuse.
        """
        options = dict(options or {})
        fields = {option.name: option for option in dataclasses.fields(cls)}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise ValueError(
                f"{method!r} has no options {unknown}; its options (with their defaults): {cls().to_dict()}."
            )
        types_of = typing.get_type_hints(cls)
        for key, value in options.items():
            expected = types_of[key]
            if not _accepts(expected, value):
                raise ValueError(
                    f"Option {key!r} of method {method!r} must be {_describe(expected)} (default "
                    f"{fields[key].default!r}), got {value!r} ({_describe(type(value))})."
                )
        try:
            return cls(**options)
        except ValueError as error:
            raise ValueError(f"Method {method!r}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        """Every option by name: what a run records and a model card shows."""
        return dataclasses.asdict(self)


def positive(config: MethodConfig, *names: str) -> None:
    """Refuse a config whose options `names` are not above 0 (a `__post_init__` check)."""
    for name in names:
        if not getattr(config, name) > 0:
            raise ValueError(f"{name} must be positive, got {getattr(config, name)}.")


def non_negative(config: MethodConfig, *names: str) -> None:
    """Refuse a config whose options `names` are below 0 (a `__post_init__` check)."""
    for name in names:
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be non-negative, got {getattr(config, name)}.")


class Distiller(nn.Module):
    """Base class of distillation methods.

    Args:
        config: the method's options, an instance of its `config_class`; its defaults when None.
    """

    #: The dataclass of the method's options.
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    #: What the method does, in a line of the model card.
    description: ClassVar[str] = "a distillation method registered with liaf_hf.distillation.register_distiller"
    #: Where the method was published (authors, venue, year); None for this library's own.
    reference: ClassVar[str | None] = None
    #: True for methods that weigh each ground-truth instance and report the weights through `select`, which
    #: the selector pictures draw (`liaf_hf.visualization.selector_weights`).
    selects_instances: ClassVar[bool] = False

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__()
        if config is None:
            config = self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}.")
        self.config = config

    def select(
        self, *, student: GFLObjectDetectionOutput, teacher: GFLObjectDetectionOutput, batch: DistillationBatch
    ) -> Any:
        """The instance weights of the batch, per level, for methods with `selects_instances`."""
        raise NotImplementedError(f"{type(self).__name__} does not weigh instances (selects_instances is False).")

    def selecting_part(self) -> Distiller | None:
        """The method (or, in a combined one, the part) whose `select` reports instance weights; None if none."""
        return self if self.selects_instances else None

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
    #: True for methods that read `DistillationBatch.held_out_directions`: the trainer then runs the student
    #: again on each half of the batch for its loss's gradient, and its backbone and FPN twice more.
    needs_held_out_directions: bool = False

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


#: Joins registered method names into a combined method: "liaf+ld".
COMBINE_SEPARATOR = "+"
_REGISTRY: dict[str, type[Distiller]] = {}


def register_distiller(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: make a `Distiller` subclass available as `--method <name>`. It is built as
    `cls(student_config=..., teacher_config=..., config=cls.config_class(...))`."""
    if COMBINE_SEPARATOR in name:
        raise ValueError(f"A method name cannot contain {COMBINE_SEPARATOR!r}, which combines methods: {name!r}.")

    def decorate(cls: type[Distiller]) -> type[Distiller]:
        if not (isinstance(cls, type) and issubclass(cls, Distiller)):
            raise TypeError(f"register_distiller({name!r}) decorates a Distiller subclass, got {cls!r}.")
        if not (dataclasses.is_dataclass(cls.config_class) and issubclass(cls.config_class, MethodConfig)):
            raise TypeError(f"{cls.__name__}.config_class must be a MethodConfig dataclass, got {cls.config_class!r}.")
        if name in _REGISTRY:
            raise ValueError(f"A distillation method named {name!r} is already registered.")
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Distiller]:
    """The class registered under `name` (a single method, not a combined one)."""
    (part,) = method_parts(name)
    return _REGISTRY[part]


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


MethodOptions = MethodConfig | Mapping[str, Any]


def method_config(name: str, options: MethodOptions | Mapping[str, MethodOptions] | None = None):
    """The options of method `name` as its config: `options` checked and completed with the defaults.

    `options` is the method's config or a mapping of option names to values (JSON's); for a combined method
    (`"liaf+ld"`), a mapping of part names to either, a part left out keeping its defaults. Returns the config,
    or for a combined method a dict of configs keyed by part.

    Raises:
        ValueError: naming the method, the option and what it takes.
    """
    parts = method_parts(name)
    if len(parts) == 1:
        config_class = _REGISTRY[parts[0]].config_class
        if isinstance(options, MethodConfig):
            if not isinstance(options, config_class):
                raise ValueError(f"Method {name!r} takes a {config_class.__name__}, got a {type(options).__name__}.")
            return options
        if options is not None and not isinstance(options, Mapping):
            raise ValueError(f"The options of method {name!r} must be a JSON object (a dict), got {options!r}.")
        return config_class.from_options(options, method=parts[0])
    options = dict(options or {})
    misplaced = sorted(set(options) - set(parts))
    if misplaced:
        unknown_in_parts = [
            f"{part}.{key}"
            for part in parts
            if isinstance(options.get(part), Mapping)
            for key in sorted(
                set(options[part]) - {option.name for option in dataclasses.fields(_REGISTRY[part].config_class)}
            )
        ]
        raise ValueError(
            f"{name!r} has no options {misplaced + unknown_in_parts}: the options of a combined method are given "
            f"per part, keyed by part name {parts}, e.g. {{{parts[0]!r}: {{...}}}}. Its options: "
            f"{method_settings(name)}."
        )
    not_options = sorted(part for part, value in options.items() if not isinstance(value, (Mapping, MethodConfig)))
    if not_options:
        raise ValueError(
            f"The options of parts {not_options} of {name!r} must be dicts of keyword options, keyed by option "
            f"name, e.g. {{{not_options[0]!r}: {{...}}}}."
        )
    return {part: method_config(part, options.get(part)) for part in parts}


def method_settings(name: str, options: MethodOptions | Mapping[str, MethodOptions] | None = None) -> dict:
    """Every option of method `name` as it would run with `options` (per part for a combined method:
    `{"liaf": {...}, "ld": {...}}`), as plain JSON values: what a run records, so its settings stay known when
    a default changes later."""
    config = method_config(name, options)
    if isinstance(config, dict):
        return {part: part_config.to_dict() for part, part_config in config.items()}
    return config.to_dict()


def check_method_options(name: str, options: MethodOptions | Mapping[str, MethodOptions] | None) -> None:
    """Refuse options that method `name` does not have, or whose values it does not take, before anything is
    built or loaded (a run checks its `--method_options` at parse time).

    Raises:
        ValueError: naming the method, the option, the method's options with their defaults, and the type
            expected.
    """
    method_config(name, options)


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


def build_distiller(
    name: str,
    *,
    student_config: GFLConfig,
    teacher_config: GFLConfig,
    config: MethodOptions | Mapping[str, MethodOptions] | None = None,
    **options: Any,
) -> Distiller:
    """The distiller registered under `name`, built for this student/teacher pair.

    Its options are `config` (the method's config, or a mapping of options) or, for short, keyword `options`
    (`build_distiller("liaf", ..., alpha=2.0)`). A combined name (`"liaf+ld"`) builds a `CompositeDistiller`;
    its options then map each part's name to that part's config or options (`liaf={"alpha": 2.0},
    ld=LDConfig(weight=0.5)`), and a part left out keeps its defaults.
    """
    if config is not None and options:
        raise ValueError(f"Give the options of {name!r} either as config= or as keywords, not both.")
    configs = method_config(name, config if config is not None else options)
    if not isinstance(configs, dict):
        return _REGISTRY[name](student_config=student_config, teacher_config=teacher_config, config=configs)
    return CompositeDistiller(
        parts={
            part: _REGISTRY[part](student_config=student_config, teacher_config=teacher_config, config=part_config)
            for part, part_config in configs.items()
        }
    )


@dataclass(frozen=True)
class CompositeConfig(MethodConfig):
    """A combined method's options: each part's own config, keyed by the part's registered name."""

    parts: Mapping[str, MethodConfig] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {name: config.to_dict() for name, config in self.parts.items()}


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

    config_class = CompositeConfig

    def __init__(self, *, parts: dict[str, Distiller]) -> None:
        super().__init__(CompositeConfig(parts={name: part.config for name, part in parts.items()}))
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
        self.needs_held_out_directions = any(part.needs_held_out_directions for part in parts.values())

    def compile_losses(self, **compile_options) -> None:
        for part in self.parts.values():
            part.compile_losses(**compile_options)

    def selecting_part(self) -> Distiller | None:
        for part in self.parts.values():
            found = part.selecting_part()
            if found is not None:
                return found
        return None

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


def check_batch(student: GFLObjectDetectionOutput, batch: DistillationBatch, *, num_levels: int) -> None:
    """Refuse a batch that does not describe `student`'s features: `num_levels` FPN maps and strides, and as
    many images (box lists) as the maps hold. What every feature method checks before it compares maps."""
    if len(batch.strides) != num_levels or len(student.fpn_features) != num_levels:
        raise ValueError(
            f"Expected {num_levels} FPN levels; got {len(student.fpn_features)} student maps and "
            f"{len(batch.strides)} strides."
        )
    if len(batch.boxes) != student.fpn_features[0].shape[0]:
        raise ValueError(
            f"The batch describes {len(batch.boxes)} images but the features hold {student.fpn_features[0].shape[0]}."
        )


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

    description = "no distillation: the detector trains on the labels alone"

    def __init__(
        self, *, student_config: GFLConfig, teacher_config: GFLConfig | None = None, config: MethodConfig | None = None
    ) -> None:
        super().__init__(config)

    def forward(self, *, student, teacher, batch) -> DistillationResult:
        return DistillationResult()
