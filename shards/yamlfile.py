"""Reading the project's YAML files one way: the training config, the two models files, DensePose configs.

Each reader keeps its own error class and its own checks of values; what they share is how a file is read
(``yaml.safe_load``'s loader, never arbitrary objects; a key given twice in one mapping is refused), what a
broken file says (one line naming the file and the reason, with the line and column of a syntax error), and a
strict check that refuses keys it does not know rather than ignoring a misspelt setting.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml


class YamlFileError(ValueError):
    """A YAML file that cannot be used; the message is one line naming the file (readers pass their own class)."""


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one silently, so a
    setting written twice would quietly lose its first value). Keys brought in by a ``<<`` merge may be
    overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeConstructor reports it itself
                    continue
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _syntax_problem(error: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: where, then what."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is not None and problem:
        context = getattr(error, "context", None)
        detail = f"{problem} ({context})" if context else problem
        return f"line {mark.line + 1}, column {mark.column + 1}: {detail}"
    return " ".join(str(error).split())


def load_mapping(path: str | os.PathLike, *, label: str | None = None, what: str = "file", hint: str = "",
                 allow_empty: bool = True, error: type[Exception] = YamlFileError) -> dict[Any, Any]:
    """The top-level mapping of a local YAML file; an empty file is an empty mapping (or refused).

    ``label`` names the file in messages (default: the path; e.g. ``--models PATH``), ``what`` says what the
    file is ("config file"), ``hint`` is added to the missing-file message, ``error`` is the class raised.
    """
    location = Path(path)
    name = label if label is not None else str(location)
    try:
        text = location.read_text(encoding="utf-8")
    except FileNotFoundError as cause:
        raise error(f"{name}: {what} does not exist{hint}") from cause
    except IsADirectoryError as cause:
        raise error(f"{name}: is a folder, not a {what}") from cause
    except (OSError, UnicodeDecodeError) as cause:
        raise error(f"{name}: cannot read {what}: {cause}") from cause
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as cause:
        raise error(f"{name}: not valid YAML: {_syntax_problem(cause)}") from cause
    if data is None:
        if not allow_empty:
            raise error(f"{name}: {what} is empty")
        return {}
    if not isinstance(data, dict):
        raise error(f"{name}: the top level must be a YAML mapping (key: value lines), got {type(data).__name__}")
    return data


def check_keys(mapping: Mapping[Any, Any], known: Collection[str], *, where: str, section: str = "",
               error: type[Exception] = YamlFileError) -> None:
    """Refuse keys outside ``known``: ``WHERE: unknown key(s) [...] [under SECTION]; known: [...]``."""
    unknown = sorted((key for key in mapping if key not in known), key=str)
    if unknown:
        under = f" under {section}" if section else ""
        raise error(f"{where}: unknown key(s) {unknown}{under}; known: {sorted(known)}")
