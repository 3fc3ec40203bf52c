"""User-written YAML files (experiments, hardware profiles) read into pydantic models.

Every problem becomes one ``DepthbenchError`` that names the file, each offending field and what
is allowed there, so a user fixes the file in one go instead of one error at a time.

The reader is PyYAML's safe loader with two changes: a key given twice in one mapping is an error
naming the key and both lines (PyYAML keeps the last silently), and numbers in exponent notation
without a dot (``1e-3``, ``1e308``) are numbers, as in YAML 1.2 (YAML 1.1 reads them as text).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from suite.errors import DepthbenchError
from suite.files import read_text

Model = TypeVar("Model", bound=BaseModel)

# YAML 1.2's float, which (unlike 1.1's) needs no dot before an exponent: 1e-3, 1E+5, -2e308.
_FLOAT_1_2 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)


class _DuplicateKey(yaml.MarkedYAMLError):
    """A mapping names one key twice."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses repeated keys and reads 1e-3 as a number."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key == "<<":  # a merge key, expanded by flatten_mapping
                continue
            line = key_node.start_mark.line + 1
            if isinstance(key, Hashable) and key in first_line:
                raise _DuplicateKey(
                    problem=f"key {key!r} is given twice (lines {first_line[key]} and {line}); "
                    "keep one of them",
                    problem_mark=key_node.start_mark,
                )
            if isinstance(key, Hashable):
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)


# Tried after SafeLoader's own resolvers (for a subclass, PyYAML copies their table first), so
# what YAML 1.1 reads as an int, a timestamp or a float stays so; only 1e-3 and the like change.
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def read_yaml(path: Path, what: str) -> Any:
    """The content of the YAML file ``path``; ``what`` names the file in errors."""
    if not path.is_file():
        raise DepthbenchError(f"{what} file {path} does not exist")
    text = read_text(path, what, "save it as UTF-8")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as error:
        line = error.problem_mark.line + 1
        raise DepthbenchError(f"{what} {path}, line {line}: {error.problem}") from error
    except yaml.YAMLError as error:
        raise DepthbenchError(f"{what} {path}: not valid YAML: {error}") from error


def load_yaml_model(
    model: type[Model],
    path: Path,
    what: str,
    defaults: dict[str, Any] | None = None,
    context: Any = None,
) -> Model:
    """``model`` read from the YAML file ``path``, with ``defaults`` for fields the file leaves out.

    ``what`` ("profile", "experiment") names the file in errors; ``context`` goes to validators.
    """
    content = read_yaml(path, what)
    if not isinstance(content, dict):
        raise DepthbenchError(
            f"{what} {path}: expected a mapping of fields ({', '.join(model.model_fields)}), "
            f"found {type(content).__name__}"
        )
    try:
        return model.model_validate({**(defaults or {}), **content}, context=context)
    except ValidationError as error:
        problems = "\n".join(f"  - {describe(problem, model)}" for problem in error.errors())
        raise DepthbenchError(f"{what} {path} is invalid:\n{problems}") from error


def describe(problem: dict[str, Any], root: type[BaseModel]) -> str:
    """One pydantic problem as 'field X: what is wrong', with the allowed fields for a typo."""
    where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
    if problem["type"] == "extra_forbidden":
        allowed = _model_at(root, problem["loc"][:-1]).model_fields
        return f"field {where!r}: unknown field; allowed here: {', '.join(allowed)}"
    if problem["type"] == "missing":
        return f"field {where!r}: required but missing"
    return f"field {where!r}: {problem['msg'].removeprefix('Value error, ')}"


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    """The (nested) model that ``loc`` points into; list indices are stepped over."""
    for part in loc:
        if isinstance(part, int):
            continue
        model = next(_models_in(model.model_fields[part].annotation))
    return model


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models inside an annotation such as ``list[X]`` or ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in getattr(annotation, "__args__", ()):
        yield from _models_in(argument)
