"""Sweep files: a whole ablation written down once, as YAML, instead of a long command line.

A sweep is a list of override rows; `jobs/submit.py --sweep-file FILE` hands them to
`launch.plan_runs`, which lays the command line's overrides and `--array` axes over each
row. The format is deliberately small:

    base:                  # overrides for every row (optional)
      pretrained: timm
    grid:                  # cartesian product of the axes, in the order written
      strategy: [fixmatch, local]
      threshold: [0.9, "0.9+0.02*epoch"]
      backbone:            # an axis of mappings sets several keys together; its name is a label
        - {model: resnet50}
        - {model: vit_small_patch16_224, image_size: 224}
      seed: [42, 43, 44]
    grids: [...]           # several grids, their rows joined (e.g. supervised has no threshold)
    runs:                  # single rows, appended (optional)
      - {strategy: supervised, seed: 42}

Every mistake is a one-line UserError naming the file and the key, before anything runs; so is
a run listed twice (a grid value repeated, two grids that overlap): the file plans exactly the
runs it lists.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from sslrun.config import ALIASES, parse_overrides
from sslrun.errors import UserError
from sslrun.yaml_file import read_yaml_mapping

TOP_KEYS = ("base", "grid", "grids", "runs")


def _text(path: Path, key: str, value: Any) -> str:
    """A YAML scalar as the override text a user would type (`true`, `0.9`, `resnet50`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)) and value != "":
        return str(value)
    raise UserError(f"{path}: {key}: expected a number, a word or true/false, got {value!r}")


def _row(path: Path, where: str, mapping: Any) -> dict[str, str]:
    """A mapping of config keys -> override texts; every key is checked against Config."""
    if not isinstance(mapping, dict):
        raise UserError(f"{path}: {where}: expected a mapping of config keys, got {type(mapping).__name__}")
    out: dict[str, str] = {}
    for key, value in mapping.items():
        name = ALIASES.get(str(key), str(key))
        text = _text(path, f"{where}.{key}", value)
        try:
            parse_overrides([f"{name}={text}"])
        except UserError as err:
            raise UserError(f"{path}: {where}.{key}: {err}") from None
        out[name] = text
    return out


def _grid(path: Path, where: str, grid: Any) -> list[dict[str, str]]:
    """The cartesian product of a grid's axes; an axis of mappings merges several keys per value."""
    if not isinstance(grid, dict) or not grid:
        raise UserError(f"{path}: {where}: expected a mapping of key -> list of values")
    axes: list[list[dict[str, str]]] = []
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: {where}.{key}: expected a non-empty list of values")
        if all(isinstance(v, dict) for v in values):
            axes.append([_row(path, f"{where}.{key}[{i}]", v) for i, v in enumerate(values)])
        elif any(isinstance(v, (dict, list)) for v in values):
            raise UserError(f"{path}: {where}.{key}: expected all plain values or all mappings")
        else:
            axes.append([_row(path, f"{where}.{key}", {key: v}) for v in values])
    rows = []
    for combo in itertools.product(*axes):
        row: dict[str, str] = {}
        for part in combo:
            row.update(part)
        rows.append(row)
    return rows


def read_sweep_file(path: str | Path) -> list[dict[str, str]]:
    """The file's override rows: grid products, then single runs, each laid over `base`.

    Row keys come first and base keys after them, so a run's name (derived from its overrides
    in order) starts with what distinguishes it from its neighbours.
    """
    path = Path(path)
    raw = read_yaml_mapping(path, f"a mapping with keys {', '.join(TOP_KEYS)}", label="sweep file ")
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}' (expected {', '.join(TOP_KEYS)})")
    base = _row(path, "base", raw.get("base") or {})
    rows: list[dict[str, str]] = []
    if "grid" in raw:
        rows += _grid(path, "grid", raw["grid"])
    grids = raw.get("grids", [])
    if not isinstance(grids, list):
        raise UserError(f"{path}: grids: expected a list of grids")
    for i, grid in enumerate(grids):
        rows += _grid(path, f"grids[{i}]", grid)
    runs = raw.get("runs", [])
    if not isinstance(runs, list):
        raise UserError(f"{path}: runs: expected a list of mappings")
    rows += [_row(path, f"runs[{i}]", r) for i, r in enumerate(runs)]
    if not rows:
        raise UserError(f"{path}: no runs (give grid:, grids: or runs:)")
    out: list[dict[str, str]] = []
    seen: set[tuple[tuple[str, str], ...]] = set()
    for row in rows:
        full = {**row, **{k: v for k, v in base.items() if k not in row}}
        key = tuple(sorted(full.items()))
        if key in seen:
            # A sweep never plans fewer runs than it lists without saying so.
            shown = ", ".join(f"{k}={v}" for k, v in full.items())
            raise UserError(f"{path}: the run {{{shown}}} is listed twice; remove one of them")
        seen.add(key)
        out.append(full)
    return out
