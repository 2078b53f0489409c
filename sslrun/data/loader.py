"""What each rank reads at each step, and the DataLoader that reads it.

Step s of a run reads global positions [s*G, (s+1)*G) of an endless stream per role
(labeled, unlabeled); position p is sample perm_e[p mod n] of epoch e = p // n, with perm_e a
permutation seeded by (seed, role, e). Rank r takes its own contiguous slice of each global
batch. So:
- resume is exact: a restart at step s reads what the first run would have read;
- every rank runs the same number of steps and never runs dry (the stream has no end);
- each sample's augmentation is seeded by (seed, role, p): the same pixels whatever the
  number of workers, and whether or not the run was restarted.
"""

from __future__ import annotations

import os
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, get_worker_info

from sslrun.data.decoded_cache import DecodedCache
from sslrun.data.handover_pool import HandoverPool, fresh_buffer
from sslrun.data.sample_draws import SPLITMIX_GAMMA, SPLITMIX_MUL1, SPLITMIX_MUL2
from sslrun.data.samples import SplitSamples
from sslrun.data.transforms import Transform, decode, draws_random, fit

LABELED, UNLABELED, EVAL = 0, 1, 2
MASK64 = (1 << 64) - 1


_U = np.uint64


def _mix(h: int, v: int) -> int:
    """One splitmix64 step folding integer `v` into state `h`."""
    h = (h ^ (v & MASK64)) * SPLITMIX_MUL1 & MASK64
    h = (h ^ (h >> 31)) * SPLITMIX_MUL2 & MASK64
    return h ^ (h >> 29)


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps): cheap, stable across runs and platforms."""
    h = SPLITMIX_GAMMA
    for v in values:
        h = _mix(h, v)
    return h >> 1


def mix_seeds(*values: int | np.ndarray) -> np.ndarray:
    """mix_seed over arrays (int64 out, the same value per element as mix_seed): a step's seeds
    in a few numpy ops instead of a Python loop per sample. Leading integers are mixed in Python
    first, so mix_seeds(seed, role, positions) costs one vectorised round, not three."""
    h, k = SPLITMIX_GAMMA, 0
    while k < len(values) and not isinstance(values[k], np.ndarray):
        h, k = _mix(h, int(values[k])), k + 1
    if k == len(values):
        return np.int64(h >> 1)
    a = np.full(np.broadcast_shapes(*(np.shape(v) for v in values[k:])), h, dtype=_U)
    for v in values[k:]:  # uint64 array arithmetic wraps modulo 2**64 without a warning
        a = (a ^ np.asarray(v).astype(np.int64).astype(_U)) * _U(SPLITMIX_MUL1)
        a = (a ^ (a >> _U(31))) * _U(SPLITMIX_MUL2)
        a ^= a >> _U(29)
    return (a >> _U(1)).astype(np.int64)


@dataclass(frozen=True)
class Pool:
    """The samples one role draws from: (split id, index in split, label) columns."""

    split: np.ndarray
    index: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


@dataclass(frozen=True)
class Stream:
    pool: Pool
    role: int
    per_rank: int  # samples per rank per step


class StepSampler:
    """Yields, for each step in [start, end), this rank's list of items to load."""

    def __init__(self, streams: list[Stream], seed: int, rank: int, world: int, start: int, end: int) -> None:
        self.streams, self.seed, self.rank, self.world = streams, seed, rank, world
        self.start, self.end = start, end

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    @lru_cache(maxsize=8)  # noqa: B019 - a few epochs' permutations, per sampler
    def _perm(self, role: int, n: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, role, n, epoch]).permutation(n)

    def items(self, step: int) -> np.ndarray:
        """This rank's items of `step`: rows of (role, split id, index, label, seed), int64."""
        out = np.empty((sum(st.per_rank for st in self.streams), 5), np.int64)
        at = 0
        for st in self.streams:
            n = len(st.pool)
            base = step * st.per_rank * self.world + self.rank * st.per_rank
            p = np.arange(base, base + st.per_rank, dtype=np.int64)
            i = np.empty_like(p)
            for e in range(base // n, (base + st.per_rank - 1) // n + 1):  # one epoch, or more where the step crosses one
                lo, hi = max(base, e * n) - base, min(base + st.per_rank, (e + 1) * n) - base
                i[lo:hi] = self._perm(st.role, n, e)[p[lo:hi] - e * n]
            rows = out[at:at + st.per_rank]
            rows[:, 0] = st.role
            rows[:, 1], rows[:, 2], rows[:, 3] = st.pool.split[i], st.pool.index[i], st.pool.label[i]
            rows[:, 4] = mix_seeds(self.seed, st.role, p)
            at += st.per_rank
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        for step in range(self.start, self.end):
            yield self.items(step)


_READERS: weakref.WeakSet[ShardImages] = weakref.WeakSet()


def _close_in_child() -> None:
    """In a forked process (a DataLoader worker) every reader's descriptors are copies of the
    parent's: close them there, so that each process opens and closes its own. A fork hook, not a
    getpid check in `read`: that was a system call per sample."""
    for reader in list(_READERS):
        reader.close()


os.register_at_fork(after_in_child=_close_in_child)


class ShardImages(Dataset):
    """Reads a step's samples from their shards by offset, decodes and augments them, and
    stacks them into the step's Batch (`__getitems__`).

    Shard files are opened on first read and closed by close(), by `with`, or when the
    dataset is collected: an evaluation builds a dataset per pass, and a long run evaluates
    hundreds of times in one process (issue 13: the descriptors used to pile up).

    With a `cache` (sslrun/data/decoded_cache.py), an image decoded once is not decoded again
    while the cache's budget lasts."""

    pool: HandoverPool | None = None  # the training loader's (StepBatches), for its workers' batches

    def __init__(self, splits: list[SplitSamples], size: int, views: dict[int, list[Transform]],
                 cache: DecodedCache | None = None) -> None:
        self.splits, self.size, self.views, self.cache = splits, size, views, cache
        self.draws = {role: [draws_random(t) for t in ts] for role, ts in views.items()}
        self._fds: dict[str, int] = {}
        _READERS.add(self)

    def read(self, split_id: int, index: int) -> bytes:
        s = self.splits[split_id]
        path = s.shards[int(s.shard[index])]
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return os.pread(fd, int(s.size[index]), int(s.offset[index]))

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> ShardImages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict:  # a spawned worker opens its own files
        state = self.__dict__.copy()
        state["_fds"] = {}
        if self.cache is not None:
            state["cache"] = self.cache.emptied()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        _READERS.add(self)

    def image(self, split_id: int, index: int) -> Tensor:
        """Sample `index` of split `split_id`, decoded and fitted to size x size (uint8 CHW)."""
        cache = self.cache
        if cache is not None:
            img = cache.get((split_id, index))
            if img is not None:
                return img
        s = self.splits[split_id]
        img = fit(decode(self.read(split_id, index), lambda: f"{s.shards[int(s.shard[index])]} sample {s.ids[index]}"),
                  self.size)
        if cache is not None:
            cache.put((split_id, index), img)
        return img

    def __getitem__(self, item: Sequence[int]) -> Batch:
        """One item as a batch of one (DataLoader's per-sample fetch, which sslrun does not use)."""
        return self.__getitems__([item])

    def __getitems__(self, items: Sequence[Sequence[int]] | np.ndarray) -> Batch:
        """A step's items (rows of role, split id, index, label, seed) read, decoded, viewed and
        stacked into one Batch in one call: DataLoader's batched fetch, whose collate_fn then
        passes the batch through. Why one call: at 32 px a decode is 20-30 us, and a tuple per
        sample, a list per view and a regrouping by role in a separate collate cost about a third
        of that (cProfile, issue 16).

        Each view that draws is seeded from its sample's seed; in the training process the
        caller's generator state, which that seeding overwrites, is saved and restored once per
        call, and not at all when no view draws."""
        rows = np.asarray(items, dtype=np.int64).reshape(-1, 5)
        roles = rows[:, 0]
        present = set(roles.tolist())
        state = None
        if get_worker_info() is None and any(any(self.draws[role]) for role in present):
            state = torch.get_rng_state()
        images: list[tuple[str, list[Tensor]]] = []
        ints: list[tuple[str, np.ndarray]] = []
        try:
            for role, names in ROLE_KEYS:
                if role not in present:
                    continue
                mine = rows[roles == role]
                decoded = (self.image(sid, idx) for sid, idx in zip(mine[:, 1].tolist(), mine[:, 2].tolist()))
                views = self.make_views(role, decoded, mine[:, 4])
                images += [(names[k], v) for k, v in enumerate(views)]
                ints += self._columns(role, mine)
        finally:
            if state is not None:
                torch.set_rng_state(state)
        return pack(images, ints, self.pool)

    def make_views(self, role: int, images: Iterable[Tensor], seeds: np.ndarray) -> list[list[Tensor]]:
        """The role's views of decoded images (one list per view, in image order), each view that
        draws seeded by (its sample's seed, view number)."""
        transforms = self.views[role]
        per_view_seeds = [mix_seeds(seeds, k).tolist() if draws else None for k, draws in enumerate(self.draws[role])]
        out: list[list[Tensor]] = [[] for _ in transforms]
        # the CPU generator only: torch.manual_seed also visits every accelerator backend, ~0.5 ms
        # a call here, more than decoding a small JPEG; transforms draw from this one
        gen = torch.default_generator
        for j, img in enumerate(images):
            for k, t in enumerate(transforms):
                view_seeds = per_view_seeds[k]
                if view_seeds is not None:
                    gen.manual_seed(view_seeds[j])
                out[k].append(t(img))
        return out

    def _columns(self, role: int, mine: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """The role's integer columns: labels and indices, or indices and hidden truth; for
        training, each sample's seed, from which augment_on=trainer draws its views."""
        index = mine[:, 2]
        if role == UNLABELED:
            return [("u_index", index), ("u_truth", self._per_split(mine, "hidden")), ("u_seed", mine[:, 4])]
        if role == EVAL:
            return [("y", self._per_split(mine, "label")), ("y_index", index)]
        return [("y", mine[:, 3]), ("y_index", index), ("x_seed", mine[:, 4])]

    def _per_split(self, mine: np.ndarray, column: str) -> np.ndarray:
        """A sample-index column (label, hidden) looked up in each row's own split."""
        out = np.empty(len(mine), np.int64)
        for sid in np.unique(mine[:, 1]).tolist():
            at = mine[:, 1] == sid
            out[at] = getattr(self.splits[sid], column)[mine[at, 2]]
        return out

    def __len__(self) -> int:  # only for DataLoader's sanity checks; sampling is by item
        return sum(len(s) for s in self.splits)


# each role's batch keys, one per view in order, in the order a batch holds them
ROLE_KEYS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (LABELED, ("x",)), (EVAL, ("x",)), (UNLABELED, ("u_weak", "u_strong")))


Layout = list[tuple[str, int, torch.dtype, tuple[int, ...]]]  # key, byte offset, dtype, shape


class Batch(dict):
    """A step's batch: a dict of tensors that are all views of one byte buffer (images, then the
    index and label vectors).

    Why: every tensor a worker hands to the trainer costs a shared-memory file, and a file
    descriptor passed over a socket to the worker's descriptor-sharing thread (torch's
    file_descriptor strategy), in both processes; a FixMatch batch has seven tensors. Pickled, a
    Batch is its one buffer and its layout."""

    packed: tuple[Tensor, Layout] | None = None
    slot: int = -1  # the worker's pool slot its buffer came from (HandoverPool), -1 for none

    def __reduce__(self) -> tuple:
        if self.packed is None:
            return dict, (dict(self),)
        return _unpack, (*self.packed, self.slot)


def _unpack(buf: Tensor, layout: Layout, slot: int = -1) -> Batch:
    """The batch's tensors as views of its buffer's storage."""
    storage = buf.untyped_storage()
    out = Batch()
    for key, at, dtype, shape in layout:
        out[key] = torch.empty(0, dtype=dtype).set_(storage, at // dtype.itemsize, shape)
    out.slot = slot
    return out


def pack(images: list[tuple[str, list[Tensor]]], ints: list[tuple[str, np.ndarray]],
         pool: HandoverPool | None = None) -> Batch:
    """Stack each key's images, then the integer columns, into the batch's one buffer (in shared
    memory inside a worker, so the batch crosses to the trainer without a copy; from the
    worker's `pool` where one is given)."""
    shapes = {tuple(t.shape) for _, ts in images for t in ts}
    dtypes = {t.dtype for _, ts in images for t in ts}
    if len(shapes) > 1 or len(dtypes) > 1:  # views of different sizes: one stack per key
        out = Batch({key: _stack(ts) for key, ts in images})
        out.update({key: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)) for key, v in ints})
        return out
    shape = shapes.pop() if shapes else (0,)
    dtype = dtypes.pop() if dtypes else torch.uint8
    n_img, n_int = sum(len(ts) for _, ts in images), sum(len(v) for _, v in ints)
    image_bytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    int_at = -(-n_img * image_bytes // 8) * 8  # the int64 columns start 8-byte aligned
    slot, buf = pool.buffer(int_at + 8 * n_int) if pool is not None else (-1, fresh_buffer(int_at + 8 * n_int))
    storage = buf.untyped_storage()
    img_buf = torch.empty(0, dtype=dtype).set_(storage, 0, (n_img, *shape))
    layout: Layout = []
    at = 0
    for key, ts in images:
        torch.stack(ts, out=img_buf[at:at + len(ts)])
        layout.append((key, at * image_bytes, dtype, (len(ts), *shape)))
        at += len(ts)
    if ints:
        torch.empty(0, dtype=torch.int64).set_(storage, int_at // 8, (n_int,)).numpy()[:] = np.concatenate([v for _, v in ints])
    at = int_at
    for key, v in ints:
        layout.append((key, at, torch.int64, (len(v),)))
        at += 8 * len(v)
    out = _unpack(buf, layout, slot)
    out.packed = (buf, layout)
    return out


def collate(batch: Batch) -> Batch:
    """DataLoader's collate_fn: ShardImages.__getitems__ has made the batch already."""
    return batch


def _stack(images: list[Tensor]) -> Tensor:
    """torch.stack, into shared memory inside a worker (as default_collate does)."""
    first = images[0]
    out = fresh_buffer(len(images) * first.numel() * first.element_size())
    return torch.stack(images, out=out.view(first.dtype).view(len(images), *first.shape))


def make_loader(dataset: ShardImages, batches: object, workers: int, pin: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=batches,  # type: ignore[arg-type]
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=_worker_init,
    )


HANDOVER_BYTES = 4 << 20  # a handover holds the steps whose images fit in this (at least 1, at most MAX_GROUP)
MAX_GROUP = 8


class GroupedSteps:
    """A StepSampler's steps, `group` at a time: one item per group, its steps' rows in step order."""

    def __init__(self, sampler: StepSampler, group: int) -> None:
        self.sampler, self.group = sampler, group

    def sizes(self) -> Iterator[int]:
        """The number of steps in each group, in order (the last may hold fewer)."""
        for s in range(self.sampler.start, self.sampler.end, self.group):
            yield min(self.group, self.sampler.end - s)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.group)

    def __iter__(self) -> Iterator[np.ndarray]:
        s = self.sampler.start
        for k in self.sizes():
            yield np.concatenate([self.sampler.items(t) for t in range(s, s + k)])
            s += k


def split_steps(batch: dict[str, Tensor], k: int) -> list[Batch]:
    """A group's batch as its `k` steps' batches: each key's rows are the steps' rows in step order
    (ShardImages keeps the order of the items within a role), all of one length per step. The
    parts are views of the group's buffer, which lives while any of them does."""
    if k == 1:
        return [batch if isinstance(batch, Batch) else Batch(batch)]
    out = [Batch() for _ in range(k)]
    for key, t in batch.items():
        n, rest = divmod(t.shape[0], k)
        if rest:
            raise ValueError(f"split_steps: {key} has {t.shape[0]} rows, not a multiple of {k} steps")
        for step, part in enumerate(t.split(n) if n else [t] * k):
            out[step][key] = part
    return out


def group_size(dataset: ShardImages, sampler: StepSampler, workers: int) -> int:
    """Steps per worker handover: 1 in-process; else enough for HANDOVER_BYTES of images.

    Why: each handover costs about a millisecond whatever its size (a fresh shared-memory file,
    its descriptor sent over a socket, pickling, the queue; bench/RESULTS-throughput.md), which
    at 32 px is a third of the decode work of a 64-image step."""
    if workers <= 0:
        return 1
    images = sum(st.per_rank * len(dataset.views.get(st.role, ())) for st in sampler.streams)
    step_bytes = max(1, images * 3 * dataset.size * dataset.size)
    return max(1, min(MAX_GROUP, HANDOVER_BYTES // step_bytes))


class StepBatches:
    """A run's batches, one a step, from `workers` loader processes that hand them over
    `group_size` steps at a time (split again here), in buffers they reuse once nothing here
    points at them (sslrun/data/handover_pool.py)."""

    def __init__(self, dataset: ShardImages, sampler: StepSampler, workers: int, pin: bool) -> None:
        self.dataset, self.sampler = dataset, sampler
        self.group = group_size(dataset, sampler, workers)
        self.pool = HandoverPool(workers) if workers > 0 and not pin and HandoverPool.usable() else None
        dataset.pool = self.pool  # the workers forked by iter() below carry it
        grouped = GroupedSteps(sampler, self.group)
        self._sizes = grouped.sizes()
        self._groups = iter(make_loader(dataset, grouped, workers, pin))
        self._pending: deque[Batch] = deque()
        self.handovers = self.reused = 0  # batches received, and of those in a pool buffer used before
        self._slots_seen: set[int] = set()

    def __iter__(self) -> StepBatches:
        return self

    def __next__(self) -> Batch:
        if self.pool is not None:
            self.pool.give_back()
        if not self._pending:
            group = next(self._groups)
            self.handovers += 1
            slot = getattr(group, "slot", -1)
            if self.pool is not None and slot >= 0:
                self.reused += slot in self._slots_seen
                self._slots_seen.add(slot)
                self.pool.received(slot, next(iter(group.values())).untyped_storage())
            self._pending.extend(split_steps(group, next(self._sizes)))
        return self._pending.popleft()


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers are processes already; threads inside them only contend


def eval_batches(n: int, batch_size: int, rank: int, world: int,
                 indices: Sequence[int] | None = None) -> list[list[tuple[int, int, int, int, int]]]:
    """Rank r evaluates samples r, r+world, ... (of `indices`, or of range(n)): every sample
    exactly once over all ranks; a rank may get none (a split smaller than the world)."""
    order = range(n) if indices is None else [int(i) for i in indices]
    mine = list(order[rank::world])
    return [[(EVAL, 0, i, -1, 0) for i in mine[k:k + batch_size]] for k in range(0, len(mine), batch_size)]


def default_workers() -> tuple[int, str]:
    """(loader processes, why): the CPUs this rank may use, less one for the trainer, at most 16."""
    from sslrun.distributed import cpus_for_rank

    cpus, source = cpus_for_rank()
    return max(0, min(cpus - 1, 16)), f"{cpus} CPUs for this rank ({source}), one left to the trainer"
