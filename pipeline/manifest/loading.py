"""Manifests read safely: YAML through the safe loader, keys given twice and alias bombs refused,
syntax errors with their line, then validated against the schema with every problem reported.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.manifest.errors import (
    Loc,
    ManifestError,
    Problem,
    Source,
    pydantic_message,
)
from pipeline.manifest.schema import Manifest
from pipeline.messages import one_line


def _duplicate_keys(node: yaml.Node | None, loc: Loc = ()) -> Iterator[Problem]:
    """Keys given twice in one mapping (yaml would keep the last one silently)."""
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for k, v in node.value:
            if k.value in seen:
                yield loc + (k.value,), f"key given twice (again on line {k.start_mark.line + 1})"
            seen.add(k.value)
            yield from _duplicate_keys(v, loc + (k.value,))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, loc + (i,))


MAX_EXPANDED_NODES = 100_000  # far above any real manifest; aliases can otherwise expand exponentially


def _check_expanded_size(root: yaml.Node | None, label: str) -> None:
    """Refuse recursive aliases and documents whose aliases expand beyond MAX_EXPANDED_NODES
    ("billion laughs"): validation walks the expanded tree."""
    count = 0
    stack: list[tuple[yaml.Node, tuple[int, ...]]] = [(root, ())] if root is not None else []
    while stack:
        node, ancestors = stack.pop()
        count += 1
        if id(node) in ancestors:
            raise ManifestError([f"{label}:{node.start_mark.line + 1}: YAML alias refers to a node that contains it"])
        if count > MAX_EXPANDED_NODES:
            raise ManifestError([f"{label}: YAML aliases expand to more than {MAX_EXPANDED_NODES} values"])
        children = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else (node.value if isinstance(node, yaml.SequenceNode) else [])
        )
        stack += [(child, ancestors + (id(node),)) for child in children]


def _parse(text: str, label: str) -> tuple[Any, yaml.Node | None]:
    """The data and node tree of one YAML document (safe loader), syntax errors with their line."""
    try:
        loader = yaml.SafeLoader(text)  # checks the characters first
    except yaml.reader.ReaderError as err:  # a character YAML does not allow (control characters)
        line = text.count("\n", 0, err.position) + 1
        message = f"{label}:{line}: not YAML text: character #x{err.character:04x} is not allowed"
        raise ManifestError([message]) from None
    try:
        node = loader.get_single_node()
        _check_expanded_size(node, label)
        return (loader.construct_document(node) if node is not None else None), node
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{label}:{mark.line + 1}" if mark else label
        raise ManifestError([f"{where}: YAML syntax error: {err.problem or err.context}"]) from None
    finally:
        loader.dispose()


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], label: str) -> dict[str, Any]:
    """The manifest's data with each ``PATH=VALUE`` of ``overrides`` set (``--set``): PATH is a
    dotted field path (``resources.num_gpus``, ``fit.iterations``), VALUE is read as YAML
    (``0``, ``null``, ``[1, 2]``, ``{sigma: 25}``), mappings on the way are made as needed.
    The result is validated like the file, so a bad override gets the same error a bad file would."""
    out = copy.deepcopy(data)
    for text in overrides:
        path, sep, raw = text.partition("=")
        fields = path.strip().split(".")
        if not sep or not all(fields):
            raise ManifestError([f"{label}: --set {text!r}: expected FIELD.PATH=VALUE, e.g. resources.num_gpus=0"])
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ManifestError([f"{label}: --set {path}: value is not YAML: {one_line(err)}"]) from None
        node = out
        for i, name in enumerate(fields[:-1]):
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                where = ".".join(fields[: i + 1])
                raise ManifestError([f"{label}: --set {path}: {where} is not a mapping (no field {fields[i + 1]})"])
        node[fields[-1]] = value
    return out


def load_manifest(source: str | Path, overrides: Sequence[str] = ()) -> Manifest:
    """Read and validate a manifest from a file (a Path, or a one-line str) or from YAML text.

    Raises ManifestError listing every problem found, one ``FILE:LINE: field.path: message``
    per line (no line when the field is absent from the file).
    """
    if isinstance(source, Path) or "\n" not in source:
        label = str(source)
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as err:
            raise ManifestError([f"{label}: cannot read manifest: {err.strerror or err}"]) from None
        except UnicodeDecodeError as err:
            raise ManifestError([f"{label}: not UTF-8 text (byte {err.start})"]) from None
    else:
        label, text = "<manifest>", source
    return parse_manifest(text, label, overrides)


def parse_manifest(text: str, label: str, overrides: Sequence[str] = ()) -> Manifest:
    """Validate manifest YAML text, with `apply_overrides` of ``overrides``; `label` (a file name
    or URI) starts every error line."""
    data, root = _parse(text, label)
    located = Source(label, root)
    problems = list(_duplicate_keys(root))
    if not isinstance(data, dict):
        raise located.error(problems + [((), "a manifest is a YAML mapping (name, images, tasks, model, ...)")])
    data = apply_overrides(data, overrides, label)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as err:
        problems += [(tuple(e["loc"]), pydantic_message(e)) for e in err.errors()]
    if problems:
        raise located.error(problems)
    manifest._source = located
    return manifest
