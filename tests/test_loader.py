"""What each rank reads at each step: deterministic, disjoint across ranks, worker-independent."""

from __future__ import annotations

import numpy as np
import torch

import pytest

from sslrun.data import loader as L
from sslrun.data.loader import EVAL, LABELED, UNLABELED, Pool, ShardImages, StepSampler, Stream, eval_batches, make_loader
from sslrun.data.manifest import read_manifest
from sslrun.data.samples import load_split
from sslrun.data.transforms import make_transform


def _pool(n: int) -> Pool:
    return Pool(np.zeros(n, np.int64), np.arange(n), np.zeros(n, np.int64))


def test_ranks_split_each_global_batch_and_cover_every_sample_per_epoch():
    n, per_rank, world = 24, 3, 2
    seen = []
    for step in range(4):  # 4 steps x 6 = one epoch of 24
        batch = []
        for rank in range(world):
            items = StepSampler([Stream(_pool(n), LABELED, per_rank)], 5, rank, world, 0, 4).items(step)
            batch += [it[2] for it in items]
        assert len(set(batch)) == per_rank * world
        seen += batch
    assert sorted(seen) == list(range(n))


def test_resume_reads_what_the_uninterrupted_run_read():
    streams = [Stream(_pool(10), LABELED, 4), Stream(_pool(50), UNLABELED, 8)]
    full = list(StepSampler(streams, 1, 0, 1, 0, 9))
    resumed = list(StepSampler(streams, 1, 0, 1, 5, 9))
    assert [a.tolist() for a in full[5:]] == [a.tolist() for a in resumed]


def test_step_items_are_the_per_position_definition():
    """The vectorised sampler gives, for each position p of a role's stream, sample perm_e[p mod n]
    of epoch e = p // n and seed mix_seed(seed, role, p): the module's definition, written out
    per sample here, for steps that cross an epoch boundary, ranks of worlds of 2 and 3, and a
    pool smaller than a rank's share of a step (3 samples, 4 a step: a step spans 3 epochs)."""
    from sslrun.data.loader import mix_seed

    for n_labeled, rank, world in ((13, 0, 1), (13, 2, 3), (3, 1, 2)):
        pools = {LABELED: Pool(np.zeros(n_labeled, np.int64), np.arange(n_labeled) * 2, np.arange(n_labeled) % 3),
                 UNLABELED: Pool(np.ones(50, np.int64), np.arange(50), np.full(50, -1))}
        per_rank = {LABELED: 4, UNLABELED: 9}
        sampler = StepSampler([Stream(pools[r], r, per_rank[r]) for r in (LABELED, UNLABELED)], 7, rank, world, 0, 12)
        for step in range(12):
            want = []
            for role in (LABELED, UNLABELED):
                pool, n, k = pools[role], len(pools[role]), per_rank[role]
                for p in range(step * k * world + rank * k, step * k * world + (rank + 1) * k):
                    i = int(np.random.default_rng([7, role, n, p // n]).permutation(n)[p % n])
                    want.append([role, int(pool.split[i]), int(pool.index[i]), int(pool.label[i]), mix_seed(7, role, p)])
            assert sampler.items(step).tolist() == want, (n_labeled, rank, step)


def test_mix_seeds_is_mix_seed_elementwise():
    from sslrun.data.loader import mix_seed, mix_seeds

    rng = np.random.default_rng(0)
    values = [0, 1, -1, 2**62, 2**63 - 1, -(2**63)] + [int(v) for v in rng.integers(-(2**63), 2**63 - 1, 200)]
    got = mix_seeds(np.array(values, dtype=np.int64), 3).tolist()
    assert got == [mix_seed(v, 3) for v in values]
    assert int(mix_seeds(42, 1, 7)) == mix_seed(42, 1, 7)
    assert all(0 <= v < 2**63 for v in got)


def test_eval_batches_cover_each_sample_once_over_ranks():
    got = [it[2] for r in range(3) for b in eval_batches(10, 4, r, 3) for it in b]
    assert sorted(got) == list(range(10))
    assert all(it[0] == EVAL for b in eval_batches(10, 4, 0, 3) for it in b)


def test_same_pixels_whatever_the_worker_count(digits):
    manifest = read_manifest(digits)
    train, unl = load_split(manifest, "train"), load_split(manifest, "unlabeled")
    views = {LABELED: [make_transform("weak")], UNLABELED: [make_transform("weak"), make_transform("randaugment")]}
    streams = [Stream(_pool(len(train)), LABELED, 4),
               Stream(Pool(np.ones(len(unl), np.int64), np.arange(len(unl)), np.full(len(unl), -1)), UNLABELED, 8)]

    def batches(workers: int) -> list[dict[str, torch.Tensor]]:
        ds = ShardImages([train, unl], 32, views)
        return list(make_loader(ds, StepSampler(streams, 3, 0, 1, 0, 3), workers, False))

    a, b = batches(0), batches(2)
    it = iter(make_loader(ShardImages([train, unl], 32, views), StepSampler(streams, 3, 0, 1, 0, 3), 0, False))
    before = torch.get_rng_state()  # (creating the iterator draws a base seed; reading must draw nothing)
    list(it)
    assert torch.equal(before, torch.get_rng_state()), "loading in the main process must not move the global RNG"
    for x, y in zip(a, b):
        assert x.keys() == y.keys() == {"x", "y", "y_index", "x_seed", "u_weak", "u_strong", "u_index", "u_truth", "u_seed"}
        for k in x:
            assert torch.equal(x[k], y[k]), k
    assert a[0]["x"].dtype == torch.uint8 and a[0]["x"].shape == (4, 3, 32, 32)
    assert not torch.equal(a[0]["u_weak"], a[0]["u_strong"])
    assert (a[0]["u_truth"] >= 0).all(), "digits' unlabeled samples carry their hidden class for diagnostics"
    # each sample's seed, as the sampler gives it, for augment_on=trainer's draws
    sampler = StepSampler(streams, 3, 0, 1, 0, 3)
    for step, batch in enumerate(a):
        rows = sampler.items(step)
        assert batch["x_seed"].tolist() == rows[rows[:, 0] == LABELED, 4].tolist()
        assert batch["u_seed"].tolist() == rows[rows[:, 0] == UNLABELED, 4].tolist()


def _open_fds() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


def test_repeated_evaluations_and_loader_rebuilds_do_not_grow_open_fds(digits):
    """Issue 13 item 3: each pass builds a ShardImages; its shard descriptors must not outlive it."""
    m = read_manifest(digits)
    split = load_split(m, "test" if "test" in m.splits else "train")
    items = [b for b in eval_batches(len(split), 64, 0, 1)][:3]

    def one_pass() -> None:
        ds = ShardImages([split], 8, {EVAL: [make_transform("none")]})
        for batch in make_loader(ds, items, 0, False):
            assert batch["x"].shape[1:] == (3, 8, 8)

    one_pass()
    before = _open_fds()
    for _ in range(10):
        one_pass()
    assert _open_fds() == before
    with ShardImages([split], 8, {EVAL: [make_transform("none")]}) as ds:
        ds.__getitems__(items[0])
        assert _open_fds() > before
    assert _open_fds() == before


def test_a_worker_hands_over_a_batch_as_one_buffer(digits):
    """Every tensor crossing from a worker costs a shared-memory file and a descriptor: a
    FixMatch batch crosses as one buffer, its images and integer columns views of it."""
    manifest = read_manifest(digits)
    train, unl = load_split(manifest, "train"), load_split(manifest, "unlabeled")
    views = {LABELED: [make_transform("weak")], UNLABELED: [make_transform("weak"), make_transform("weak")]}
    streams = [Stream(Pool(np.zeros(len(train), np.int64), np.arange(len(train)), train.label), LABELED, 4),
               Stream(Pool(np.ones(len(unl), np.int64), np.arange(len(unl)), np.full(len(unl), -1)), UNLABELED, 8)]
    for workers in (0, 1):
        batch = next(iter(make_loader(ShardImages([train, unl], 16, views), StepSampler(streams, 3, 0, 1, 0, 2),
                                      workers, False)))
        assert len({v.untyped_storage().data_ptr() for v in batch.values()}) == 1, workers
        assert all(v.is_contiguous() for v in batch.values())
        assert batch["y"].dtype == batch["u_index"].dtype == torch.int64 and batch["x"].dtype == torch.uint8
        assert batch["x"].shape == (4, 3, 16, 16) and batch["u_strong"].shape == (8, 3, 16, 16)
        assert batch["y"].tolist() == train.label[batch["y_index"].numpy()].tolist()
        assert (batch["u_truth"].numpy() == unl.hidden[batch["u_index"].numpy()]).all()


def test_a_view_that_draws_is_seeded_per_sample_and_a_plain_view_is_not(digits):
    """Any callable view is seeded from its sample's seed (its draws do not depend on the order or
    the company the sample is read in); a step-less preset ("none") is not seeded at all, so
    reading plain images leaves the global generator as it was, even where nothing restores it."""
    from sslrun.data.transforms import draws_random

    train = load_split(read_manifest(digits), "train")
    assert not draws_random(make_transform("none")) and draws_random(make_transform("weak"))
    assert draws_random(lambda img: img)  # an arbitrary callable may draw: seeded

    def noisy(img: torch.Tensor) -> torch.Tensor:  # what it drew, kept in the pixels
        return img.clone().fill_(int(torch.randint(0, 256, ())))

    ds = ShardImages([train], 8, {LABELED: [noisy], UNLABELED: [make_transform("none")]})
    items = [(LABELED, 0, i, 0, 1000 + i) for i in range(5)]
    forward = dict(zip((it[4] for it in items), ds.__getitems__(items)["x"]))
    backward = dict(zip((it[4] for it in items[::-1]), ds.__getitems__(items[::-1])["x"]))
    alone = {it[4]: ds[it]["x"][0] for it in items}
    for seed in forward:
        assert torch.equal(forward[seed], backward[seed]) and torch.equal(forward[seed], alone[seed])
    assert len({int(v[0, 0, 0]) for v in forward.values()}) > 1, "each sample drew its own numbers"
    plain = [(UNLABELED, 0, i, -1, 7) for i in range(5)]
    with torch.random.fork_rng():
        torch.manual_seed(5)
        out = ds.__getitems__(plain)
        after = torch.rand(())
        torch.manual_seed(5)
        assert torch.equal(after, torch.rand(())), "plain views must not touch the global generator"
    for it, view in zip(plain, out["u_weak"]):
        assert torch.equal(view, ds.image(0, it[2]))
    mixed = items[:2] + plain[:2] + items[2:] + plain[2:]  # roles interleaved: each role's rows keep their order
    both = ds.__getitems__(mixed)
    assert torch.equal(both["x"], torch.stack([forward[it[4]] for it in items]))
    assert both["y_index"].tolist() == [it[2] for it in items] and both["u_index"].tolist() == [it[2] for it in plain]


def test_a_forked_child_closes_its_copies_of_the_readers_descriptors(digits):
    """A DataLoader worker forked from the trainer must not keep the trainer's shard descriptors
    (a fork hook closes them in the child; the parent's stay open and usable)."""
    import os

    split = load_split(read_manifest(digits), "train")
    with ShardImages([split], 8, {LABELED: [make_transform("none")]}) as ds:
        ds.read(0, 0)
        parent_fds = dict(ds._fds)
        assert parent_fds
        pid = os.fork()
        if pid == 0:  # the child: its copies are closed, and it opens its own to read
            ok = ds._fds == {} and all(not os.path.exists(f"/proc/self/fd/{fd}") for fd in parent_fds.values())
            ok = ok and len(ds.read(0, 1)) > 0 and len(ds._fds) == 1
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert ds._fds == parent_fds and len(ds.read(0, 1)) > 0


@pytest.mark.parametrize("trainer_views", [True, False], ids=["decode-only", "loader-augments"])
def test_steps_handed_over_in_groups_are_the_steps_read_one_by_one(digits, monkeypatch, trainer_views):
    """A worker hands over several steps at once (StepBatches): split again, each is the batch
    that step reads alone, for a start and an end that are not on a group boundary."""
    manifest = read_manifest(digits)
    train, unl = load_split(manifest, "train"), load_split(manifest, "unlabeled")
    if trainer_views:
        views = {LABELED: [make_transform("none")], UNLABELED: [make_transform("none")]}
    else:
        views = {LABELED: [make_transform("weak")], UNLABELED: [make_transform("weak"), make_transform("randaugment")]}
    streams = [Stream(_pool(len(train)), LABELED, 4),
               Stream(Pool(np.ones(len(unl), np.int64), np.arange(len(unl)), np.full(len(unl), -1)), UNLABELED, 8)]
    ds = ShardImages([train, unl], 16, views)
    step_bytes = 3 * 16 * 16 * (4 + 8 * len(views[UNLABELED]))
    monkeypatch.setattr(L, "HANDOVER_BYTES", 4 * step_bytes)  # 4 steps a handover
    grouped = L.StepBatches(ds, StepSampler(streams, 3, 0, 1, 3, 14), 2, False)
    assert grouped.group == 4 and list(L.GroupedSteps(grouped.sampler, 4).sizes()) == [4, 4, 3]
    one_by_one = L.StepBatches(ds, StepSampler(streams, 3, 0, 1, 3, 14), 0, False)
    assert one_by_one.group == 1
    got, want = list(grouped), list(one_by_one)
    assert len(got) == len(want) == 11
    for step, (a, b) in enumerate(zip(got, want), start=3):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (step, key)
        assert a["x_seed"].tolist() == StepSampler(streams, 3, 0, 1, 0, 14).items(step)[:4, 4].tolist()


def test_group_size_fills_the_handover_and_stays_bounded():
    class _Views:
        views = {LABELED: [None], UNLABELED: [None]}

        def __init__(self, size: int) -> None:
            self.size = size

    sampler = StepSampler([Stream(_pool(8), LABELED, 32), Stream(_pool(8), UNLABELED, 224)], 0, 0, 1, 0, 10)
    assert L.group_size(_Views(32), sampler, 0) == 1, "in-process: nothing to hand over"
    assert L.group_size(_Views(32), sampler, 1) == L.HANDOVER_BYTES // (256 * 3 * 32 * 32) == 5
    assert L.group_size(_Views(8), sampler, 1) == L.MAX_GROUP
    assert L.group_size(_Views(96), sampler, 1) == 1


def test_split_steps_refuses_rows_that_do_not_divide():
    batch = {"x": torch.zeros(6, 3, 2, 2), "u_index": torch.zeros(0, dtype=torch.int64)}
    parts = L.split_steps(batch, 3)
    assert [p["x"].shape[0] for p in parts] == [2, 2, 2] and all(p["u_index"].shape == (0,) for p in parts)
    with pytest.raises(ValueError, match="x has 6 rows, not a multiple of 4 steps"):
        L.split_steps(batch, 4)


def test_workers_reuse_their_buffers_and_never_one_a_batch_still_uses(digits, monkeypatch):
    from sslrun.data.handover_pool import SLOTS

    """Pooled handover buffers (sslrun/data/handover_pool.py): the caller keeps every third step's
    batch, or a view of one column of it, and drops the rest. Kept batches must still hold what
    that step read after the workers have packed many more (a buffer reused too early would hold
    a later step's pixels), and dropped ones' buffers must have been reused."""
    manifest = read_manifest(digits)
    train, unl = load_split(manifest, "train"), load_split(manifest, "unlabeled")
    views = {LABELED: [make_transform("none")], UNLABELED: [make_transform("weak")]}
    streams = [Stream(_pool(len(train)), LABELED, 4),
               Stream(Pool(np.ones(len(unl), np.int64), np.arange(len(unl)), np.full(len(unl), -1)), UNLABELED, 8)]
    monkeypatch.setattr(L, "HANDOVER_BYTES", 1)  # one step a handover: a buffer per step
    want = list(L.StepBatches(ShardImages([train, unl], 16, views), StepSampler(streams, 5, 0, 1, 0, 60), 0, False))
    pooled = L.StepBatches(ShardImages([train, unl], 16, views), StepSampler(streams, 5, 0, 1, 0, 60), 1, False)
    assert pooled.pool is not None and pooled.group == 1
    kept: dict[int, object] = {}
    for step, batch in enumerate(pooled):
        if step % 6 == 0:
            kept[step] = batch  # the whole batch
        elif step % 6 == 3:
            kept[step] = batch["u_index"]  # one column's view keeps the buffer too
        del batch
    # kept batches hold their slots for good (20 of them, over the worker's 8 slots): the first
    # steps reuse, then the worker falls back to fresh buffers
    assert pooled.handovers == 60 and pooled.reused >= 5, (pooled.handovers, pooled.reused)
    dropping = L.StepBatches(ShardImages([train, unl], 16, views), StepSampler(streams, 5, 0, 1, 0, 60), 1, False)
    for step, batch in enumerate(dropping):
        assert torch.equal(batch["x"], want[step]["x"]) and torch.equal(batch["u_weak"], want[step]["u_weak"]), step
    assert dropping.reused >= 60 - 2 * SLOTS, dropping.reused  # nothing kept: nearly every buffer is a reused one
    for step, got in kept.items():
        if isinstance(got, torch.Tensor):
            assert torch.equal(got, want[step]["u_index"]), step
        else:
            for key in want[step]:
                assert torch.equal(got[key], want[step][key]), (step, key)


def test_pool_gives_back_only_what_nothing_points_at():
    from sslrun.data.handover_pool import HandoverPool

    pool = HandoverPool(1)
    a, b = torch.zeros(8, dtype=torch.uint8), torch.zeros(8, dtype=torch.uint8)
    pool.flags[:2] = 1
    pool.received(0, a.untyped_storage())
    pool.received(1, b.untyped_storage())
    view = b[2:4]
    del a, b
    assert pool.give_back() == 1 and pool.flags[:2].tolist() == [0, 1]
    del view
    assert pool.give_back() == 1 and pool.flags[:2].tolist() == [0, 0]
    assert pool.buffer(16)[0] == -1, "outside a worker: a fresh buffer, no slot"


def test_views_of_different_sizes_are_stacked_per_key():
    small = [torch.full((3, 2, 2), i, dtype=torch.uint8) for i in range(3)]
    big = [torch.full((3, 4, 4), 7, dtype=torch.uint8)]
    batch = L.pack([("x", small), ("u_weak", big)], [("y", np.array([1, 2, 3]))])
    assert batch["x"].shape == (3, 3, 2, 2) and batch["x"][:, 0, 0, 0].tolist() == [0, 1, 2]
    assert batch["u_weak"].shape == (1, 3, 4, 4) and (batch["u_weak"] == 7).all()
    assert batch["y"].tolist() == [1, 2, 3]
