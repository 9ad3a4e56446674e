"""How manifest problems are reported: every problem at once, each as ``FILE[:LINE]: field.path: message``.

A problem is (location in the manifest, message). Validators collect problems and raise them
together through pydantic (`raise_if`), which nests their locations under the caller's; once
validation ends, `Source` turns each location into the line of the YAML it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from pipeline.messages import DipError

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]  # where in the manifest, what is wrong


class ManifestError(DipError, ValueError):
    """An invalid manifest; the message has one ``FILE[:LINE]: field.path: message`` per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def raise_if(problems: list[Problem], title: str) -> None:
    """Raise all problems together, so pydantic nests them under the caller's location."""
    if problems:
        details = [
            InitErrorDetails(type=PydanticCustomError("manifest", "{msg}", {"msg": msg}), loc=loc, input=None)
            for loc, msg in problems
        ]
        raise ValidationError.from_exception_data(title, details)


def validated(adapter: TypeAdapter[Any], value: Any, loc: Loc) -> tuple[Any, list[Problem]]:
    """`value` validated (and normalised, e.g. 2 -> 2.0 for a float), or the problems at `loc`."""
    try:
        return adapter.validate_python(value), []
    except ValidationError as err:
        return value, [(loc + tuple(e["loc"]), clean_message(e["msg"])) for e in err.errors()]


@dataclass(frozen=True)
class Source:
    """The YAML a manifest came from, to turn pydantic locations into file lines."""

    label: str
    root: yaml.Node | None

    def line(self, loc: Loc) -> int | None:
        """1-based line of the deepest YAML node on `loc` (a key's own line for mappings)."""
        node, line = self.root, None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                match = next(((k, v) for k, v in node.value if k.value == part), None)
                if match is None:
                    break
                line, node = match[0].start_mark.line + 1, match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def error(self, problems: list[Problem]) -> ManifestError:
        """One error listing every problem in file order (those with no line last)."""
        located = [(self.line(loc), loc, msg) for loc, msg in problems]
        located.sort(key=lambda p: (p[0] is None, p[0] or 0))
        lines = []
        for line, loc, message in located:
            where = f"{self.label}:{line}" if line else self.label
            lines.append(f"{where}: {loc_path(loc)}: {message}" if loc else f"{where}: {message}")
        return ManifestError(lines)


def loc_path(loc: Loc) -> str:
    """('tasks', 0, 'params', 'sigma') -> 'tasks[0].params.sigma'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def pydantic_message(error: Any) -> str:
    """Pydantic's message, reworded where the manifest's reader needs different words."""
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "too_short":
        return "empty list: give at least one value"
    if error["type"] == "string_pattern_mismatch":
        return f"{error['input']!r} is not a slug: use lower-case letters, digits, _ and -"
    return clean_message(error["msg"])


def clean_message(message: str) -> str:
    """A dataclass check's message without the prefix pydantic adds (the reader sees it after the field)."""
    return message.removeprefix("Value error, ")
