"""A training step's logs pooled over ranks with collectives of the same shape on every rank.

What a rank logs may not depend on its own data: a key present only where a rank kept a
sample makes the all_reduce of one rank longer than its peer's (gloo: "collective mismatch";
NCCL: a hang or garbage). So every value is reduced by kind in a fixed layout: scalars are
averaged, Ratios pooled as sum of numerators / sum of denominators, vectors summed; and the
key layout itself is checked across ranks first, so a strategy that breaks the rule fails
with its key names instead of desyncing.
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor

from sslrun import distributed
from sslrun.strategies.base import LogValue, Ratio


def _layout_check(layout: str, device: torch.device) -> None:
    h = zlib.crc32(layout.encode())
    both = distributed.all_max(torch.tensor([h, -h], dtype=torch.int64, device=device)).tolist()
    if both[0] != -both[1]:
        raise RuntimeError(f"ranks log different keys at this step (this rank: {layout}); a strategy must return "
                           f"the same keys on every rank (use Ratio for values whose denominator may be 0)")


def pool_logs(loss: Tensor, logs: dict[str, LogValue], world: int, device: torch.device) -> tuple[dict[str, float], dict[str, Tensor]]:
    """(scalars, vectors) pooled over ranks; a Ratio whose pooled denominator is 0 is left out
    (on every rank alike, since the decision is made after the reduction)."""
    scalars = {"loss": loss.detach().float()}
    ratios: dict[str, Ratio] = {}
    vectors: dict[str, Tensor] = {}
    for key, value in logs.items():
        if isinstance(value, Ratio):
            ratios[key] = value
        elif value.dim() == 0:
            scalars[key] = value.detach().float()
        else:
            vectors[key] = value.detach().float()
    s_keys, r_keys, v_keys = sorted(scalars), sorted(ratios), sorted(vectors)
    if world > 1:
        _layout_check("s:" + ",".join(s_keys) + ";r:" + ",".join(r_keys) + ";v:"
                      + ",".join(f"{k}{tuple(vectors[k].shape)}" for k in v_keys), device)
    flat = [scalars[k].to(device) for k in s_keys]
    flat += [ratios[k].num.detach().float().to(device) for k in r_keys]
    flat += [ratios[k].den.detach().float().to(device) for k in r_keys]
    parts = [torch.stack(flat)] + [vectors[k].to(device).flatten() for k in v_keys]
    pooled = distributed.all_sum(torch.cat(parts)).cpu()
    n_s, n_r = len(s_keys), len(r_keys)
    out = {k: float(pooled[i]) / world for i, k in enumerate(s_keys)}
    for i, k in enumerate(r_keys):
        num, den = float(pooled[n_s + i]), float(pooled[n_s + n_r + i])
        if den > 0:
            out[k] = num / den
    hists, at = {}, n_s + 2 * n_r
    for k in v_keys:
        n = vectors[k].numel()
        hists[k] = pooled[at:at + n].view(vectors[k].shape)
        at += n
    return out, hists
