"""User-written YAML files (experiments, hardware profiles) read into pydantic models.

Every problem becomes one ``DepthbenchError`` that names the file, each offending field and what
is allowed there, so a user fixes the file in one go instead of one error at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from suite.errors import DepthbenchError

Model = TypeVar("Model", bound=BaseModel)


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
    if not path.is_file():
        raise DepthbenchError(f"{what} file {path} does not exist")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise DepthbenchError(f"{what} {path}: not valid YAML: {error}") from error
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
