"""The decoded-image cache: a budget it never passes, and batches bit-equal to decoding every time."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from sslrun.config import Config, make_config
from sslrun.data.decoded_cache import DecodedCache
from sslrun.data.loader import LABELED, UNLABELED, Pool, ShardImages, StepSampler, Stream, make_loader
from sslrun.data.manifest import read_manifest
from sslrun.data.samples import load_split
from sslrun.data.transforms import PRESETS, decode, fit, make_transform
from sslrun.errors import UserError


def _img(value: int, side: int = 4) -> torch.Tensor:
    return torch.full((3, side, side), value, dtype=torch.uint8)


def test_the_budget_is_never_passed_and_the_first_images_stay():
    cache = DecodedCache(3 * 48 + 10)  # three 3x4x4 images and a bit
    for k in range(5):
        cache.put((0, k), _img(k))
    assert len(cache) == 3 and cache.bytes == 3 * 48 <= cache.max_bytes
    assert [cache.get((0, k)) is not None for k in range(5)] == [True, True, True, False, False]
    assert torch.equal(cache.get((0, 1)), _img(1))
    assert (cache.hits, cache.misses) == (4, 2)  # three in the list, one for (0, 1)
    cache.put((0, 0), _img(99))  # a key already held is not replaced
    assert torch.equal(cache.get((0, 0)), _img(0)) and cache.bytes == 3 * 48
    assert len(DecodedCache(0)) == 0 and DecodedCache(-5).max_bytes == 0


def _streams(train, unl) -> list[Stream]:
    return [Stream(Pool(np.zeros(len(train), np.int64), np.arange(len(train)), train.label), LABELED, 4),
            Stream(Pool(np.ones(len(unl), np.int64), np.arange(len(unl)), np.full(len(unl), -1)), UNLABELED, 8)]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_batches_with_the_cache_equal_batches_decoded_every_time(digits, preset):
    """Many steps (every labeled image drawn several times, so most reads are hits), every view
    preset: the same pixels as without the cache, and the cached images are still the decoded
    ones afterwards (no view wrote into them)."""
    manifest = read_manifest(digits)
    train, unl = load_split(manifest, "train"), load_split(manifest, "unlabeled")
    views = {LABELED: [make_transform(preset)], UNLABELED: [make_transform("weak"), make_transform(preset)]}
    steps = 3 * len(train) // 4 + 1

    def batches(cache: DecodedCache | None) -> list[dict[str, torch.Tensor]]:
        ds = ShardImages([train, unl], 32, views, cache)
        return list(make_loader(ds, StepSampler(_streams(train, unl), 7, 0, 1, 0, steps), 0, False))

    cache = DecodedCache(1 << 30)
    plain, cached = batches(None), batches(cache)
    assert cache.hits >= 2 * len(train) and cache.misses > 0  # the labeled set is read three times
    for a, b in zip(plain, cached, strict=True):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    with ShardImages([train, unl], 32, {}) as reader:
        for (split_id, index), img in list(cache._images.items())[:200]:
            assert torch.equal(img, fit(decode(reader.read(split_id, index)), 32)), (split_id, index)


def test_a_small_budget_caches_part_and_changes_nothing(digits):
    manifest = read_manifest(digits)
    train, unl = load_split(manifest, "train"), load_split(manifest, "unlabeled")
    views = {LABELED: [make_transform("weak")], UNLABELED: [make_transform("none")]}
    cache = DecodedCache(20 * 3 * 32 * 32)

    def batches(c: DecodedCache | None) -> list[dict[str, torch.Tensor]]:
        return list(make_loader(ShardImages([train, unl], 32, views, c), StepSampler(_streams(train, unl), 1, 0, 1, 0, 40), 0, False))

    for a, b in zip(batches(None), batches(cache), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(cache) == 20 and cache.bytes == 20 * 3 * 32 * 32


def test_a_pickled_reader_carries_an_empty_cache_with_the_same_budget(digits):
    """A worker started by pickling (spawn, forkserver) must not receive everything the parent holds."""
    manifest = read_manifest(digits)
    train = load_split(manifest, "train")
    cache = DecodedCache(1 << 20)
    ds = ShardImages([train], 32, {}, cache)
    ds.image(0, 0)
    assert len(cache) == 1
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.cache is not None and len(copy.cache) == 0 and copy.cache.max_bytes == 1 << 20
    ds.close()


def test_the_budget_is_shared_out_over_the_loader_processes(digits, tmp_path):
    from sslrun.engine import Trainer

    def trainer(**kw) -> Trainer:
        cfg = Config(data=str(digits), root=str(tmp_path), sweep="s", name="n", model="cifar_cnn", image_size=16,
                     steps=1, device="cpu", **kw)
        return Trainer(cfg)

    assert trainer(workers=0, decode_cache_mb=64).decode_cache.max_bytes == 64 << 20
    assert trainer(workers=4, decode_cache_mb=64).decode_cache.max_bytes == 16 << 20
    assert trainer(workers=2, decode_cache_mb=0).decode_cache is None


@pytest.mark.parametrize("value", ["-1", "1.5", "lots", "16777217"])
def test_a_bad_budget_is_one_line_naming_the_key(value):
    with pytest.raises(UserError, match=r"^decode_cache_mb="):
        make_config({"decode_cache_mb": value})
