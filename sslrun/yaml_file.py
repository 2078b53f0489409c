"""One reader for every YAML text sslrun reads: configs, sweep files, submit defaults, run folders.

A hand-written (or planted) file fails in more ways than "not YAML", and each must end as one
line naming the file, never as a traceback from deep inside yaml, a hang, or a wrong value:
- object tags (`!!python/object`): refused, as by yaml.safe_load, which this loader extends;
- anchors and aliases (`&a`, `*a`): refused; a few lines of them make a "billion laughs"
  structure that any later str() or comparison expands (sslrun never writes them);
- a key written twice: refused (PyYAML keeps the last one without a word);
- nesting deeper than MAX_DEPTH, bytes that are not UTF-8, a file that cannot be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sslrun.errors import UserError
from sslrun.small_file import read_small

MAX_DEPTH = 50  # a config is 2 levels deep, a sweep file 4


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader without aliases, duplicate keys or deep nesting."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", event.start_mark)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:  # type: ignore[override]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                twice = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: construct_mapping below says so
                continue
            if twice:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_text(text: str) -> Any:
    """`text` as plain YAML data (see the module docstring); yaml.YAMLError when it is not."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except RecursionError:
        raise yaml.YAMLError(f"nested deeper than {MAX_DEPTH} levels") from None


def why(err: yaml.YAMLError) -> str:
    """A YAML error as a short phrase with its line: 'key 'seed' is given twice (line 3)'."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem:
        return f"{problem} (line {mark.line + 1})" if mark is not None else str(problem)
    return " ".join(str(err).split())[:120]


def read_yaml_mapping(path: Path, expected: str, label: str = "", empty_ok: bool = False) -> dict[str, Any]:
    """`path` parsed as a YAML mapping; `expected` says what the mapping should hold, `label`
    what kind of file it is ("sweep file "), `empty_ok` lets an empty file mean {}."""
    try:
        raw = load_text(read_small(path).decode("utf-8"))
    except OSError as err:
        raise UserError(f"{label}{path}: cannot read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{label}{path}: not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        raise UserError(f"{label}{path}: not valid YAML ({why(err)})") from None
    if raw is None and empty_ok:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{label}{path}: expected {expected}")
    return raw
