"""One reader for the YAML files users write by hand: configs, sweep files, submit defaults.

A hand-written file fails in three ways (unreadable, not YAML, not a mapping), and each must
end as one line naming the file, never as a traceback from deep inside yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sslrun.errors import UserError


def read_yaml_mapping(path: Path, expected: str, label: str = "", empty_ok: bool = False) -> dict[str, Any]:
    """`path` parsed as a YAML mapping; `expected` says what the mapping should hold, `label`
    what kind of file it is ("sweep file "), `empty_ok` lets an empty file mean {}."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise UserError(f"{label}{path}: cannot read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise UserError(f"{label}{path}: not valid YAML ({' '.join(str(err).split())[:120]})") from None
    if raw is None and empty_ok:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{label}{path}: expected {expected}")
    return raw
