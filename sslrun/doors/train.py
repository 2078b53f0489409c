"""One run in the foreground: `python jobs/train.py [key=value ...]` (also what srun/torchrun start)."""

from __future__ import annotations

import json
import signal
import sys

from sslrun.cli import OneLineParser, console_script


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (see README)")
    parser.add_argument("--config", help="a config.yaml to start from (e.g. a run folder's)")
    args = parser.parse_intermixed_args(argv)  # key=value overrides anywhere, before or after --config

    from sslrun.config import load_config, make_config, parse_overrides

    overrides = parse_overrides(args.overrides)
    if args.config:
        base = load_config(args.config).to_dict()  # extra.* included: a run's config.yaml rebuilds it
        overrides = {**base, **overrides}
    cfg = make_config(overrides)
    from sslrun.engine import Interrupted, run  # torch and timm (seconds): after the table's checks

    try:
        result = run(cfg)
    except Interrupted as stop:
        print(f"{stop}; run the same command to resume from {cfg.run_dir()}", file=sys.stderr)
        return 128 + stop.signum if stop.signum != signal.SIGUSR2 else 0
    print(json.dumps(result, indent=2))
    return 0


entry = console_script(main)  # `sslrun-train`
