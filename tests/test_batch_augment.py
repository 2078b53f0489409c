"""augment_on=trainer: the batched augmentations checked by hand, each sample's draws from its
own seed (the same pixels whatever rows are beside it), and a run that uses them resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from conftest import FAST, _train, _cut_and_resume
from sslrun.data import batch_augment as A
from sslrun.data.sample_draws import SampleDraws, finalize
from sslrun.errors import UserError


def _images(n: int = 16, side: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)


def _gen(n: int, seed: int = 1, view: int = A.VIEW_STRONG) -> SampleDraws:
    """Streams for n rows, as the loader's seeds would give them (large, distinct)."""
    return SampleDraws(torch.from_numpy(np.random.default_rng(seed).integers(0, 2**63 - 1, n)), view)


def _splitmix_finalizer(z: np.ndarray) -> np.ndarray:
    u = np.uint64
    z = z.astype(u)
    z = (z ^ (z >> u(30))) * u(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> u(27))) * u(0x94D049BB133111EB)
    return (z ^ (z >> u(31))).astype(np.int64)


def test_int64_tensor_arithmetic_gives_splitmix64_as_uint64_does():
    """The draws rely on int64 products wrapping and on a masked shift being logical."""
    v = np.random.default_rng(0).integers(-2**63, 2**63 - 1, 5000, dtype=np.int64)
    v[:4] = [0, -1, 2**63 - 1, -2**63]
    assert np.array_equal(finalize(torch.from_numpy(v)).numpy(), _splitmix_finalizer(v))


def test_draws_are_ranged_reach_every_value_and_follow_their_row_alone():
    r = _gen(20000)
    u, i = r.uniform()[0], r.integers(14)[0]
    assert u.dtype == torch.float32 and 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.01
    counts = torch.bincount(i, minlength=14)
    assert len(counts) == 14 and counts.min() > 0.9 * 20000 / 14, counts.tolist()
    again = _gen(20000)
    assert torch.equal(again.uniform()[0], u), "the same seeds give the same first draw"
    assert not torch.equal(again.uniform()[0], u), "the next draw is another"
    rows = torch.tensor([7, 3, 19999])
    sub = _gen(20000).rows(rows)
    assert torch.equal(sub.uniform()[0], u[rows]), "a row's stream is the same without its neighbours"
    other_view = SampleDraws(_gen(20000).seeds, A.VIEW_WEAK)
    assert not torch.equal(other_view.uniform()[0], u), "a sample's views draw from different streams"
    assert r.integers(1)[0].eq(0).all()
    with pytest.raises(ValueError):
        r.integers(0)


@pytest.mark.parametrize("preset", ["weak", "randaugment"])
def test_a_rows_pixels_do_not_depend_on_the_rows_beside_it(preset):
    """What makes 2 ranks train what 1 rank trains, and a kept row's strong view made on demand
    the view the full pass would have made."""
    x = _images(96)
    whole = A.apply_preset(preset, x, _gen(96))
    for rows in (torch.tensor([5]), torch.tensor([90, 2, 47, 13]), torch.arange(48, 96), torch.randperm(96)):
        part = A.apply_preset(preset, x[rows], _gen(96).rows(rows))
        assert torch.equal(part, whole[rows]), rows.tolist()
    with pytest.raises(ValueError, match="96 images, 3 streams"):
        A.apply_preset(preset, x, _gen(3))


def test_flip_gives_each_image_or_its_mirror_and_both_occur():
    x = _images(64)
    out = A.flip(x, _gen(64))
    same = [torch.equal(o, i) for o, i in zip(out, x)]
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)


def test_translate_is_a_crop_of_the_reflect_padded_image():
    x = _images(32, side=16)
    out = A.translate(x, _gen(32))
    p = 2  # 0.125 of 16
    padded = torch.nn.functional.pad(x.float(), (p, p, p, p), mode="reflect").to(torch.uint8)
    offsets = set()
    for k in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if torch.equal(out[k], padded[k, :, dy:dy + 16, dx:dx + 16])]
        assert hits, f"image {k} is no crop of its padded self"
        offsets.add(hits[0])
    assert len(offsets) > 5, "the offsets vary across the batch"


def test_cutout_greys_one_square_of_half_the_side_and_nothing_else():
    x = _images(8, side=16).clamp(max=100)  # no pixel is GREY before
    out = A.cutout(x, _gen(8))
    for k in range(len(x)):
        grey = (out[k] == A.GREY).all(dim=0)
        ys, xs = grey.nonzero(as_tuple=True)
        assert grey.sum() == 64 and ys.max() - ys.min() == 7 and xs.max() - xs.min() == 7
        assert torch.equal(out[k][:, ~grey], x[k][:, ~grey])


def test_ops_by_hand():
    flat = torch.full((1, 3, 8, 8), 200.0)
    one = torch.ones(1)
    assert torch.allclose(A.brightness(flat, 0.5 * one), torch.full_like(flat, 100.0))
    assert torch.allclose(A.contrast(flat, 0.3 * one), flat), "a flat image has no contrast to change"
    assert torch.allclose(A.color(flat, 0.3 * one), flat), "a grey image has no colour to change"
    x = torch.tensor([[[[200.0, 100.0], [128.0, 127.0]]]]).expand(1, 3, 2, 2)
    assert A.solarize(x, 128 * one)[0, 0].tolist() == [[55.0, 100.0], [127.0, 127.0]]
    assert A.posterize(torch.full((1, 3, 2, 2), 0b10111111 * 1.0), 4.7 * one)[0, 0, 0, 0] == 0b10110000
    assert A.posterize(torch.full((1, 3, 2, 2), 0b10111111 * 1.0), 8.5 * one)[0, 0, 0, 0] == 0b10111111
    ramp = torch.linspace(50, 150, 64).view(1, 1, 8, 8).expand(1, 3, 8, 8)
    stretched = A.autocontrast(ramp, one)
    assert stretched.min() == 0 and torch.isclose(stretched.max(), torch.tensor(255.0))
    u8 = _images(4, side=8)
    assert torch.equal(A.equalize(u8.float(), torch.ones(4)), TF.equalize(u8).float())
    assert torch.equal(A.sharpness(u8.float(), torch.ones(4)), u8.float()), "factor 1 is the image itself"


def test_geometric_ops_by_hand():
    x = _images(2, side=8).float()
    zero = torch.zeros(2)
    for op in (A.rotate, A.shear_x, A.shear_y, A.translate_x, A.translate_y):
        assert torch.equal(op(x, zero), x), op.__name__
    quarter = A.rotate(x, torch.full((2,), 90.0))
    assert torch.equal(quarter, torch.rot90(x, 1, (2, 3))) or torch.equal(quarter, torch.rot90(x, -1, (2, 3)))
    shifted = A.translate_x(x, torch.full((2,), 0.25))  # 2 of 8 columns
    assert torch.equal(shifted[..., :6], x[..., 2:]) and (shifted[..., 6:] == A.FILL).all()


def test_randaugment_is_seeded_ranged_and_uses_every_op():
    x = _images(256, side=16)
    a = A.apply_preset("randaugment", x, _gen(256, 5))
    b = A.apply_preset("randaugment", x, _gen(256, 5))
    c = A.apply_preset("randaugment", x, _gen(256, 6))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    changed = (a != x).flatten(1).any(1).float().mean()
    assert changed > 0.9, "the strong view changes nearly every image"
    for fn, lo, hi in A.RANDAUGMENT_OPS:  # both ends of every range stay in 0..255 and finite
        for v in (lo, hi):
            out = fn(x[:4].float(), torch.full((4,), float(v)))
            assert torch.isfinite(out).all() and out.shape == (4, 3, 16, 16), fn.__name__


def test_presets_without_a_batched_version_are_refused_by_name():
    with pytest.raises(UserError, match=r"^augment=jitter: no batched version for augment_on=trainer"):
        A.check_presets("jitter", "randaugment", "trainer")
    with pytest.raises(UserError, match=r"^strong=report: no batched version"):
        A.check_presets("weak", "report", "trainer")
    A.check_presets("jitter", "report", "loader")  # both exist as per-sample presets
    A.check_presets("jitter", "report", "auto")  # auto falls back to the loader for them


def test_auto_augments_on_the_trainer_where_both_presets_have_a_batched_version():
    assert A.resolve_augment_on("auto", "weak", "randaugment") == "trainer"
    assert A.resolve_augment_on("auto", "none", "randaugment") == "trainer"
    assert A.resolve_augment_on("auto", "jitter", "randaugment") == "loader"
    assert A.resolve_augment_on("auto", "weak", "report") == "loader"
    assert A.resolve_augment_on("loader", "weak", "randaugment") == "loader"
    assert A.resolve_augment_on("trainer", "weak", "randaugment") == "trainer"


@pytest.mark.slow
def test_fixmatch_with_batched_augmentation_trains_and_resumes_exactly(digits, tmp_path):
    common = [*FAST, "strategy=fixmatch", "augment_on=trainer", "ema_decay=0.9", f"data={digits}",
              f"root={tmp_path}", "sweep=s"]
    straight = _train([*common, "name=straight"])
    assert straight["steps"] == 12
    metrics = [json.loads(ln) for ln in (tmp_path / "s" / "straight" / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["kind"] == "train"]
    assert train and all(m["images_per_s"] > 0 and "loss_u" in m and "mask_rate" in m for m in train)
    resumed = _cut_and_resume(common, tmp_path / "s")
    assert resumed["restarts"] == 1 and resumed["weights_sha256"] == straight["weights_sha256"]
