"""extra.weak_pass=no_grad: the weak view forwarded apart, without gradients, gives the joint
forward's loss and gradients on a net with no batch statistics, and really runs without grad."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import FAST, _train, _cut_and_resume
from sslrun.config import make_config
from sslrun.errors import UserError
from sslrun.strategies import create_strategy
from sslrun.strategies.base import Batch, StepInfo


class _Recorder(nn.Module):
    """A linear net that notes each forward's batch size and whether gradients were on."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 3)
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        return self.fc(x.flatten(1))


def _one_step(tmp_path, strategy: str, keys: dict[str, str],
              asked: list[torch.Tensor] | None = None) -> tuple[float, torch.Tensor, list[tuple[int, bool]], dict[str, float]]:
    """One compute_loss + backward on a fixed batch: loss, weight gradient, forward calls, scalar logs.
    With `asked`, the strong views are made on demand (as augment_on=trainer does for a strategy
    that asks for some rows only), and the rows each call asked for are appended to it."""
    cfg = make_config({"root": str(tmp_path), "strategy": strategy, "threshold": "0.4", "lambda_u": "1.0", **keys})
    strat = create_strategy(cfg, 3)
    strat.setup(8, 1)
    if strategy == "freematch":  # its thresholds start at 1/C, which every top softmax passes
        strat.time_p = torch.tensor(0.8)
    torch.manual_seed(0)
    net = _Recorder()
    gen = torch.Generator().manual_seed(1)
    batch = Batch(x=torch.randn(2, 3, 2, 2, generator=gen), y=torch.tensor([0, 2]),
                  u_weak=torch.randn(6, 3, 2, 2, generator=gen) * 3, u_strong=torch.randn(6, 3, 2, 2, generator=gen),
                  u_index=torch.arange(6), u_truth=torch.tensor([0, 1, 2, 0, 1, 2]))
    if asked is not None:
        strong = batch.u_strong

        def make_strong(rows: torch.Tensor) -> torch.Tensor:
            asked.append(rows.clone())
            return strong[rows]

        batch.u_strong, batch.make_strong = None, make_strong
    loss, logs = strat.compute_loss(net, batch, StepInfo(0, 0.0))
    loss.backward()
    scalars = {k: float(v.item()) for k, v in logs.items() if k != "pl_class_counts"}
    return loss.item(), net.fc.weight.grad.clone(), net.calls, scalars


def _loss_and_grad(tmp_path, strategy: str, weak_pass: str) -> tuple[float, torch.Tensor, list[tuple[int, bool]]]:
    loss, grad, calls, logs = _one_step(tmp_path, strategy, {"extra.weak_pass": weak_pass})
    assert logs["mask_rate"] > 0  # the unlabeled loss takes part, so its gradient is compared too
    return loss, grad, calls


@pytest.mark.parametrize("strategy", ["fixmatch", "flexmatch", "freematch"])
def test_apart_without_grad_equals_the_joint_forward(tmp_path, strategy):
    joint_loss, joint_grad, joint_calls = _loss_and_grad(tmp_path, strategy, "joint")
    apart_loss, apart_grad, apart_calls = _loss_and_grad(tmp_path, strategy, "no_grad")
    assert joint_calls == [(14, True)]
    assert apart_calls == [(6, False), (8, True)]  # weak view alone without grad, then labeled + strong
    assert apart_loss == pytest.approx(joint_loss, rel=1e-6)
    assert torch.allclose(apart_grad, joint_grad, atol=1e-7)


def test_weak_pass_is_checked(tmp_path):
    with pytest.raises(UserError, match="extra.weak_pass=apart"):
        create_strategy(make_config({"root": str(tmp_path), "strategy": "fixmatch", "extra.weak_pass": "apart"}), 3)


def test_ema_pass_takes_the_targets_from_the_teacher(tmp_path):
    cfg = make_config({"root": str(tmp_path), "strategy": "fixmatch", "threshold": "0.0", "extra.weak_pass": "ema"})
    strat = create_strategy(cfg, 3)
    student, teacher = _Recorder(), _Recorder()
    with torch.no_grad():  # a teacher that is sure of class 2 for every sample
        teacher.fc.weight.zero_()
        teacher.fc.bias.copy_(torch.tensor([0.0, 0.0, 9.0]))
    strat.teacher = teacher
    batch = Batch(x=torch.randn(2, 3, 2, 2), y=torch.tensor([0, 1]), u_weak=torch.randn(4, 3, 2, 2),
                  u_strong=torch.randn(4, 3, 2, 2), u_truth=torch.tensor([2, 2, 2, 0]))
    _, logs = strat.compute_loss(student, batch, StepInfo(0, 0.0))
    assert teacher.calls == [(4, False)] and student.calls == [(6, True)]
    assert logs["pl_acc"].item() == pytest.approx(0.75)  # the teacher's labels (all 2), not the student's


def test_ema_pass_needs_an_ema_model(tmp_path):
    with pytest.raises(UserError, match="extra.weak_pass=ema .*ema_decay=0"):
        create_strategy(make_config({"root": str(tmp_path), "strategy": "fixmatch", "extra.weak_pass": "ema",
                                     "ema_decay": "0"}), 3)


@pytest.mark.slow
@pytest.mark.parametrize("strong_pass, augment_on", [("all", "loader"), ("kept", "loader"), ("kept", "trainer")])
def test_ema_pass_run_resumes_exactly_with_its_teacher_restored(digits, tmp_path, strong_pass, augment_on):
    """The teacher is the EMA model the checkpoint restores in place: a run cut after step 8 and
    resumed must end with the uninterrupted run's weights, or its targets came from elsewhere.
    With only the kept strong views forwarded, the batch's size follows the teacher too; with the
    trainer augmenting, so do the strong views made. Where views are kept, threshold=0.1 keeps
    every row from the first step (a top softmax over 10 classes is at least 0.1), so the kept
    views are really made and learned after the cut; which rows a pass keeps is checked above."""
    threshold = "0.1" if strong_pass == "kept" else "0.5"
    common = [*FAST, "strategy=fixmatch", "extra.weak_pass=ema", "ema_decay=0.9", f"threshold={threshold}",
              f"extra.strong_pass={strong_pass}", f"augment_on={augment_on}", f"data={digits}", f"root={tmp_path}", "sweep=s"]
    straight = _train([*common, "name=straight"])
    assert straight["steps"] == 12
    if strong_pass == "kept":
        rates = [json.loads(ln)["mask_rate"] for ln in (tmp_path / "s" / "straight" / "metrics.jsonl").read_text().splitlines()
                 if "mask_rate" in ln]
        assert rates and min(rates) > 0, rates
    resumed = _cut_and_resume(common, tmp_path / "s")
    assert resumed["restarts"] == 1 and resumed["weights_sha256"] == straight["weights_sha256"]


def _kept_loss_and_grad(tmp_path, strategy: str, strong_pass: str, threshold: str) -> tuple[float, torch.Tensor, list[tuple[int, bool]], dict[str, float]]:
    return _one_step(tmp_path, strategy, {"threshold": threshold, "extra.weak_pass": "no_grad", "extra.strong_pass": strong_pass})


@pytest.mark.parametrize("strategy", ["fixmatch", "flexmatch", "freematch"])
def test_kept_strong_pass_gives_the_same_loss_and_gradient(tmp_path, strategy):
    """On a net with no batch statistics, forwarding only the kept strong views changes nothing
    but the batch: the strong rows under the threshold were multiplied by 0."""
    all_loss, all_grad, all_calls, all_logs = _kept_loss_and_grad(tmp_path, strategy, "all", "0.4")
    kept_loss, kept_grad, kept_calls, kept_logs = _kept_loss_and_grad(tmp_path, strategy, "kept", "0.4")
    kept = round(kept_logs["mask_rate"] * 6)
    assert 0 < kept < 6  # some rows dropped, some kept: both halves of the claim are exercised
    assert all_calls == [(6, False), (8, True)]
    assert kept_calls == [(6, False), (2 + kept, True)]
    assert kept_loss == pytest.approx(all_loss, rel=1e-6)
    assert torch.allclose(kept_grad, all_grad, atol=1e-7)
    assert kept_logs == pytest.approx(all_logs, rel=1e-6, nan_ok=True)


@pytest.mark.parametrize("strategy", ["fixmatch", "freematch"])
def test_kept_strong_pass_asks_for_the_kept_rows_strong_views_only(tmp_path, strategy):
    """With strong views made on demand, compute_loss asks once, for the rows over the threshold,
    and the loss and gradient are those of the pass over every premade strong view."""
    all_loss, all_grad, _, all_logs = _kept_loss_and_grad(tmp_path, strategy, "all", "0.4")
    asked: list[torch.Tensor] = []
    loss, grad, calls, logs = _one_step(tmp_path, strategy, {"threshold": "0.4", "extra.weak_pass": "no_grad",
                                                             "extra.strong_pass": "kept"}, asked)
    kept = round(logs["mask_rate"] * 6)
    assert 0 < kept < 6 and len(asked) == 1 and len(asked[0]) == kept
    assert asked[0].tolist() == sorted(set(asked[0].tolist()))  # each kept row once, in batch order
    assert calls == [(6, False), (2 + kept, True)]
    assert loss == pytest.approx(all_loss, rel=1e-6) and torch.allclose(grad, all_grad, atol=1e-7)
    assert logs == pytest.approx(all_logs, rel=1e-6, nan_ok=True)


def test_joint_pass_asks_for_every_strong_view(tmp_path):
    asked: list[torch.Tensor] = []
    joint_loss, joint_grad, _, _ = _one_step(tmp_path, "fixmatch", {})
    loss, grad, _, _ = _one_step(tmp_path, "fixmatch", {}, asked)
    assert [r.tolist() for r in asked] == [list(range(6))]
    assert loss == pytest.approx(joint_loss, rel=1e-6) and torch.allclose(grad, joint_grad, atol=1e-7)


def test_batch_augmenting_engine_makes_strong_views_on_demand_for_kept_pass(digits, tmp_path):
    """augment_on=trainer, strong_pass=kept: no strong view is made up front; those asked for are
    the very views the full pass makes of those rows (each drawn from its sample's seed), the same
    again for the same samples (a resumed step draws them again) and new ones for the next step's
    samples, none for no rows; images/s still counts three views a sample."""
    from sslrun.config import parse_overrides
    from sslrun.engine import Trainer

    def trainer(strong_pass: str) -> Trainer:
        return Trainer(make_config(parse_overrides([
            *FAST, "strategy=fixmatch", "augment_on=trainer", "ema_decay=0.9", "extra.weak_pass=ema",
            f"extra.strong_pass={strong_pass}", f"data={digits}", f"root={tmp_path}", "sweep=s", f"name={strong_pass}"])))

    tr = trainer("kept")
    raw = next(tr._loader(0))
    batch = tr._batch(raw)
    assert batch.u_strong is None and batch.make_strong is not None and batch.u_weak is not None
    m = batch.u_weak.shape[0]
    assert batch.views_drawn() == batch.x.shape[0] + 2 * m
    rows = torch.tensor([0, 2, m - 1])
    views = batch.strong_rows(rows)
    assert views.shape == (3, *batch.u_weak.shape[1:]) and views.dtype == batch.u_weak.dtype
    assert torch.equal(views, tr._batch(raw).strong_rows(rows))
    assert batch.strong_rows(torch.tensor([], dtype=torch.long)).shape == (0, *batch.u_weak.shape[1:])
    assert not torch.equal(views, batch.u_weak[rows])  # strongly augmented, not the weak view again
    full = trainer("all")._batch(raw)  # strong_pass=all: every strong view made up front
    assert full.make_strong is None and full.u_strong is not None and full.u_strong.shape[0] == m
    assert torch.equal(views, full.u_strong[rows]), "made on demand, a row's view is the full pass's"
    assert full.views_drawn() == batch.views_drawn()
    loader = tr._loader(0)
    next(loader)
    later = next(loader)  # step 1: other stream positions, other seeds
    assert not torch.equal(later["u_seed"], raw["u_seed"])
    assert not torch.equal(views, tr._batch({**raw, "u_seed": later["u_seed"]}).strong_rows(rows))


def test_kept_strong_pass_with_nothing_kept_learns_the_labeled_batch(tmp_path):
    loss, grad, calls, logs = _kept_loss_and_grad(tmp_path, "fixmatch", "kept", "1.0")
    assert logs["mask_rate"] == 0 and logs["loss_u"] == 0
    assert calls == [(6, False), (2, True)]
    assert loss == pytest.approx(logs["loss_s"]) and grad.abs().sum() > 0


def test_kept_strong_pass_needs_the_targets_first(tmp_path):
    with pytest.raises(UserError, match="extra.strong_pass=kept .*extra.weak_pass=joint"):
        create_strategy(make_config({"root": str(tmp_path), "strategy": "fixmatch", "extra.strong_pass": "kept"}), 3)
    with pytest.raises(UserError, match="extra.strong_pass=some"):
        create_strategy(make_config({"root": str(tmp_path), "strategy": "fixmatch", "extra.weak_pass": "ema",
                                     "extra.strong_pass": "some"}), 3)
