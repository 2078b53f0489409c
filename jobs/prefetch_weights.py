"""Fetch a timm model's pretrained weights on a machine with network (a login node).

`python jobs/prefetch_weights.py MODEL [--tag TAG] [--out FILE]` fills the HF/timm cache
(shared with compute nodes when $HF_HOME is on shared storage); with --out it also writes a
state_dict file to pass as `pretrained=FILE` where compute nodes have no network at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sslrun.cli import OneLineParser  # noqa: E402
from sslrun.errors import exit_on_user_error  # noqa: E402


def main() -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="timm model name, e.g. resnet50")
    parser.add_argument("--tag", default="", help="pretrained tag, e.g. a1_in1k (default: timm's default)")
    parser.add_argument("--out", type=Path, help="also save the weights here, for pretrained=FILE")
    args = parser.parse_args()

    from sslrun.models import prefetch_weights

    full = prefetch_weights(args.model, args.tag, args.out)
    if args.out:
        print(f"{full}: weights cached and saved to {args.out}; train with pretrained={args.out.absolute()}")
    else:
        print(f"{full}: weights cached; train with model={args.model} pretrained={args.tag or 'timm'}")
    return 0


if __name__ == "__main__":
    exit_on_user_error(main)
