"""One run in the foreground: `python jobs/train.py [key=value ...]` (also what srun/torchrun start)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sslrun.cli import OneLineParser  # noqa: E402
from sslrun.errors import exit_on_user_error  # noqa: E402


def main() -> int:
    parser = OneLineParser(description=__doc__)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (see README)")
    parser.add_argument("--config", help="a config.yaml to start from (e.g. a run folder's)")
    args = parser.parse_args()

    from sslrun.config import load_config, make_config, parse_overrides
    from sslrun.engine import Interrupted, run

    overrides = parse_overrides(args.overrides)
    if args.config:
        base = {k: v for k, v in load_config(args.config).to_dict().items() if k != "extra"}
        overrides = {**base, **overrides}
    cfg = make_config(overrides)
    try:
        result = run(cfg)
    except Interrupted as stop:
        print(f"{stop}; run the same command to resume from {cfg.run_dir()}", file=sys.stderr)
        return 128 + stop.signum if stop.signum != signal.SIGUSR2 else 0
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    exit_on_user_error(main)
