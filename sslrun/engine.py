"""The one training loop, readable top to bottom: `run(cfg)` trains, checkpoints and resumes.

Resume is exact because nothing depends on history that is not in the checkpoint: the data a
step reads is a function of (seed, step, rank) (data/loader.py), and every random number a
step draws comes from generators reseeded from (seed, step, rank) at its start. A checkpoint
therefore needs only weights, optimizer, schedule, EMA, step and the strategy's state.
"""

from __future__ import annotations

import gc
import logging
import math
import random
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import Tensor, nn

from sslrun import checkpoint, distributed, run_folder, run_record
from sslrun.budget import plan_for
from sslrun.config import RESUME_KEYS, Config, save_config
from sslrun.data.batch_augment import VIEW_LABELED, VIEW_STRONG, VIEW_WEAK, apply_preset, check_presets, resolve_augment_on
from sslrun.data.decoded_cache import MB, DecodedCache
from sslrun.data.loader import LABELED, UNLABELED, Pool, ShardImages, StepBatches, StepSampler, Stream, default_workers, mix_seed
from sslrun.data.manifest import Manifest, read_manifest
from sslrun.data.sample_draws import SampleDraws
from sslrun.data.samples import SplitSamples, check_shards, load_split
from sslrun.data.transforms import make_transform
from sslrun.epochs import run_epoch_steps, threshold_warning
from sslrun.errors import UserError
from sslrun.evaluate import EvalResult, evaluate, labeling_pass
from sslrun.models import create_model, data_config
from sslrun.run_check import check_run
from sslrun.strategies import create_strategy
from sslrun.step_flags import StepFlags
from sslrun.step_logs import pool_logs
from sslrun.strategies.base import Batch, LogValue, StepInfo, Strategy
from sslrun.tb import RunLog
from sslrun.vitals import Vitals

log = logging.getLogger(__name__)


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the weights of the step before are the last saved ones."""


class Interrupted(Exception):
    """A stop signal arrived; the state at `step` was saved and the run can be resumed."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; state saved")
        self.signum, self.step = signum, step


class StopSignals:
    """Turns SIGUSR2/SIGTERM/SIGINT into a flag read at step boundaries.

    A checkpoint taken inside a signal handler could catch the optimizer half-way through a
    step; the flag lets the loop finish the step, agree across ranks, and save a whole state.
    submitit's own USR2 handler (checkpoint + requeue) is kept and called after the save.
    """

    SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum = 0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        try:
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._on_signal)
        except ValueError:  # not the main thread: leave signals to the caller
            self.previous.clear()
        return self

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def submitit_handler(self) -> Any:
        prev = self.previous.get(signal.SIGUSR2)
        owner = getattr(prev, "__self__", None)
        return prev if owner is not None and type(owner).__module__.startswith("submitit") else None


def seed_step(seed: int, step: int, rank: int) -> None:
    s = mix_seed(seed, step, rank, 0x5EED)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


class Trainer:
    """State of one rank's run; `fit()` is the loop."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.info = distributed.from_environment()
        self.device = distributed.pick_device(cfg.device, self.info)
        self.vitals = Vitals(self.device)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        distributed.init(self.info, self.device)
        self.run_dir = cfg.run_dir()
        self.ckpt_dir = run_folder.ckpt_dir(self.run_dir)
        self.manifest: Manifest = read_manifest(cfg.data)
        check_shards(self.manifest, cfg.verify_shards)  # a damaged shard is found before any folder is made
        check_presets(cfg.augment, cfg.strong, cfg.augment_on)
        self.augment_on = resolve_augment_on(cfg.augment_on, cfg.augment, cfg.strong)
        self.train = load_split(self.manifest, "train")
        self.val = load_split(self.manifest, "val") if "val" in self.manifest.splits else None
        self.unlabeled = load_split(self.manifest, "unlabeled") if "unlabeled" in self.manifest.splits else None
        self.test = load_split(self.manifest, "test") if "test" in self.manifest.splits else None
        self.strategy: Strategy = create_strategy(cfg, self.manifest.num_classes)
        self.strategy.setup(len(self.unlabeled) if self.unlabeled is not None else 0, self.epoch_steps)
        warning = threshold_warning(cfg, self.epoch_steps)
        if warning and self.info.is_main:
            log.warning("%s", warning.removeprefix("warning: "))
        if cfg.workers < 0:
            self.workers, why = default_workers()
            log.info("rank %d: %d loader workers (%s; set workers= to choose)", self.info.rank, self.workers, why)
        else:
            self.workers = cfg.workers
        # the rank's budget of decoded images, shared out over the processes that decode (the
        # workers, or the trainer itself with workers=0); kept here so a rebuilt loader reuses it
        per_process = cfg.decode_cache_mb * MB // max(1, self.workers)
        self.decode_cache = DecodedCache(per_process) if per_process > 0 else None
        self.use_cuda = self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if cfg.amp == "bf16" or (cfg.amp == "auto" and self.use_cuda) else None
        self.channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and self.use_cuda)
        self.budget = plan_for(cfg.budget_s, cfg.schedule, cfg.steps)  # the cosine's length under budget_s
        self._build_model()
        self.step = 0
        self.best = {"val_acc": -1.0, "step": 0}
        self.restarts = 0
        self.elapsed_s = 0.0

    # --- set-up ------------------------------------------------------------------------
    def _build_model(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every restart
        model = create_model(cfg.model, self.manifest.num_classes, cfg.pretrained, cfg.frozen, cfg.image_size)
        if cfg.sync_bn and self.info.world > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        mean, std = data_config(model)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255
        self.ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True, device=self.device) if cfg.ema_decay > 0 else None
        self.strategy.teacher = self.ema.module if self.ema is not None else None
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if cfg.optimizer == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
        else:
            self.opt = torch.optim.AdamW(groups, lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.net: nn.Module = model
        if self.info.world > 1:
            ids = [self.device.index] if self.use_cuda else None
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if cfg.compile:
            self.net = torch.compile(self.net)  # type: ignore[assignment]

    def _lr_factor(self, step: int) -> float:
        cfg = self.cfg
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":  # FixMatch's cos(7*pi*k / (16*K)): never quite reaches 0
            progress = self.budget.progress(step) if self.budget else step / cfg.steps
            return math.cos(7 * math.pi * progress / 16)
        return 1.0

    @property
    def epoch_steps(self) -> int:
        return run_epoch_steps(self.cfg, self.manifest, self.info.world)

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 NCHW on the host -> normalised float on the device, in one pass."""
        x = images.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _loader(self, start: int) -> StepBatches:
        cfg = self.cfg
        splits: list[SplitSamples] = [self.train]
        pool = Pool(np.zeros(len(self.train), np.int64), np.arange(len(self.train)), self.train.label)
        mode = self.strategy.labeled_mode(start)
        extra = self.strategy.labeled_extra() if mode != "labeled" else None
        if extra is not None and self.unlabeled is not None and len(extra[0]):
            idx, lab = extra[0].numpy(), extra[1].numpy()
            ones = np.ones(len(idx), np.int64)
            if mode == "extra":  # the pseudo-labeled samples alone
                pool = Pool(ones, idx, lab)
            else:
                pool = Pool(np.concatenate([pool.split, ones]), np.concatenate([pool.index, idx]),
                            np.concatenate([pool.label, lab]))
        streams = [Stream(pool, LABELED, cfg.batch_size)]
        on_trainer = self.augment_on == "trainer"  # then the workers decode only; _batch augments
        views = {LABELED: [make_transform("none" if on_trainer else cfg.augment)]}
        if self.unlabeled is not None:
            splits.append(self.unlabeled)
            if self.strategy.unlabeled_views:
                n = len(self.unlabeled)
                streams.append(Stream(Pool(np.ones(n, np.int64), np.arange(n), np.full(n, -1)), UNLABELED, cfg.batch_size * cfg.mu))
                if on_trainer:  # one plain copy of each image, as "u_weak"; _batch makes the views
                    views[UNLABELED] = [make_transform("none")]
                else:
                    views[UNLABELED] = [make_transform("weak" if v == "weak" else cfg.strong) for v in self.strategy.unlabeled_views]
        dataset = ShardImages(splits, cfg.image_size, views, self.decode_cache)
        sampler = StepSampler(streams, cfg.seed, self.info.rank, self.info.world, start, cfg.steps)
        return StepBatches(dataset, sampler, self.workers, self.use_cuda)

    # --- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "strategy": self.strategy.state_dict(),
            "best": dict(self.best),
            "restarts": self.restarts,
            "elapsed_s": self.elapsed_s + (time.time() - self._t_start),
            "num_classes": self.manifest.num_classes,
            "model_name": self.cfg.model,
            "config": self.cfg.to_dict(),
            "budget": self.budget.state_dict() if self.budget else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("num_classes") != self.manifest.num_classes or state.get("model_name") != self.cfg.model:
            raise UserError(f"{self.ckpt_dir}: checkpoint is for model {state.get('model_name')} with "
                            f"{state.get('num_classes')} classes, this run has {self.cfg.model} with {self.manifest.num_classes}: "
                            f"the folder holds another run; choose another sweep= or name=")
        if self.budget is not None and state.get("budget"):
            self.budget.load_state_dict(state["budget"])
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if float(state.get("config", {}).get("lr", self.cfg.lr)) != self.cfg.lr:  # changed on resume: it takes over
            self.sched.base_lrs = [self.cfg.lr] * len(self.opt.param_groups)
            for group in self.opt.param_groups:
                group["initial_lr"] = self.cfg.lr
                group["lr"] = self.cfg.lr * self._lr_factor(self.sched.last_epoch)
        self.strategy.load_state_dict(state["strategy"])
        self.step = int(state["step"])
        self.best = dict(state["best"])
        self.restarts = int(state["restarts"]) + 1
        self.elapsed_s = float(state["elapsed_s"])

    def save(self) -> None:
        """Save on rank 0; weights that went non-finite are never saved over the last good ones."""
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            self._close_log()
            raise NonFiniteLoss(f"weights became NaN or infinite at step {self.step} of {self.run_dir}; not saved, the "
                                f"last good checkpoint is kept: resume with a lower lr= (now {self.cfg.lr})")
        if self.info.is_main:
            checkpoint.save(self.ckpt_dir, self.state_dict())
        distributed.barrier()

    # --- the loop ----------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self._t_start = time.time()
        if self.info.is_main:
            run_folder.claim(self.run_dir, save_config(self.cfg), RESUME_KEYS)
            for name in checkpoint.remove_stale_tmp(self.ckpt_dir):
                log.warning("removed %s, left by a save that was killed", self.ckpt_dir / name)
        distributed.barrier()
        if (self.run_dir / run_folder.RESULT).exists():
            log.info("%s is finished; not training again", self.run_dir)
            return run_folder.read_result(self.run_dir)
        state, note = checkpoint.load_latest(self.ckpt_dir)
        if note:
            log.warning("%s", note)
        if state is None and note:  # it had saved state: never start again from step 0 unasked
            raise UserError(f"no readable checkpoint: {note}; move {self.ckpt_dir} away to start this run over")
        if state is not None:
            self.load_state_dict(state)
            log.info("resumed %s at step %d (restart %d)", self.run_dir, self.step, self.restarts)
        if cfg.augment_on == "auto" and self.info.is_main:
            log.info("augment_on=auto: the views are made on the %s (%s)", self.augment_on,
                     f"augment={cfg.augment} and strong={cfg.strong} have batched versions" if self.augment_on == "trainer"
                     else "a preset has no batched version")
        self.runlog = RunLog(self.run_dir, self.step) if self.info.is_main else None
        it = self._loader(self.step)
        t_log, n_img = time.time(), 0
        last_saved = self.step if state is not None else -1
        first_step = self.step + 1  # of this process: logged with its start-up figures
        with StopSignals() as stop:
            while self.step < cfg.steps:
                if self.strategy.labeling_due(self.step):
                    self._labeling_pass()
                    it = self._loader(self.step)
                elif self.strategy.loader_due(self.step):
                    it = self._loader(self.step)
                seed_step(cfg.seed, self.step, self.info.rank)
                raw = next(it)
                batch = self._batch(raw)
                info = StepInfo(self.step, self.step / self.epoch_steps)
                autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
                with autocast:
                    loss, logs = self.strategy.compute_loss(self.net, batch, info)
                over = cfg.budget_s > 0 and (self.elapsed_s + time.time() - self._t_start >= cfg.budget_s
                                             or (self.budget is not None and self.step + 1 >= self.budget.steps))
                flags = StepFlags.agree(stop.signum, loss, over)
                if flags.bad_loss:
                    self._close_log()
                    raise NonFiniteLoss(f"loss is {loss.item()} at step {self.step} of {self.run_dir}; the last good "
                                        f"checkpoint is kept: resume with a lower lr= (now {cfg.lr})")
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                self.sched.step()
                if self.ema is not None:
                    self.ema.update(self.model, step=self.step)
                self.step += 1
                if self.step == first_step:
                    self._log_startup()
                if self.budget is not None:
                    planned = self.budget.steps
                    self.budget.observe(self.step, self.elapsed_s + time.time() - self._t_start, self._agree_min)
                    if self.budget.anchor_step == self.step and self.info.is_main:
                        log.info("budget_s=%g: the cosine now ends at step %d (was %d), %.0f %% of it done at step %d",
                                 cfg.budget_s, self.budget.steps, planned, 100 * self.budget.progress(self.step), self.step)
                n_img += batch.views_drawn() * self.info.world
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.time()
                    self._log_train(loss, logs, n_img / max(now - t_log, 1e-9))
                    t_log, n_img = now, 0
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    self._evaluate()
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    self.save()
                    last_saved = self.step
                # A stop is acted on once the step is whole: its forward pass has already moved the
                # BatchNorm running statistics, so saving before the step would count them twice.
                if flags.signum and self.step < cfg.steps:
                    if last_saved != self.step:
                        self.save()
                    self._close_log()
                    self._stop(flags.signum, stop)
                if flags.over_budget and self.step < cfg.steps:  # budget_s spent: stop here, evaluated and saved
                    spent_s = self.elapsed_s + time.time() - self._t_start
                    why = ("the time is spent" if spent_s >= cfg.budget_s else
                           f"the {self.budget.steps} steps estimated to fit it are done"
                           if self.budget is not None and self.step >= self.budget.steps else
                           "another rank's time is spent")
                    log.info("budget_s=%g: stopping at step %d of %d after %.0f s: %s", cfg.budget_s, self.step,
                             cfg.steps, spent_s, why)
                    if self.step % cfg.eval_every:
                        self._evaluate()
                    if last_saved != self.step:
                        self.save()
                    break
        return self._finish()

    def _log_startup(self) -> None:
        """Seconds from this process's start (a requeue is a new process) to the end of its first
        step, peak RSS and descriptors, per rank: every rank gathers, rank 0 writes."""
        figures = self.vitals.gathered({"first_step_s": time.time() - self.vitals.start, **self.vitals.common()})
        if self.runlog is not None:
            self.runlog.scalars(self.step, {"restart": float(self.restarts), **figures}, "startup")

    def _agree_min(self, n: int) -> int:
        return -int(distributed.all_max(torch.tensor([-n], device=self.device)).item())

    def _batch(self, raw: dict[str, Tensor]) -> Batch:
        dev = self.device
        if self.augment_on == "trainer":
            return self._augmented_batch(raw)
        return Batch(
            x=self.prepare(raw["x"]), y=raw["y"].to(dev, non_blocking=True), y_index=raw["y_index"].to(dev, non_blocking=True),
            u_weak=self.prepare(raw["u_weak"]) if "u_weak" in raw else None,
            u_strong=self.prepare(raw["u_strong"]) if "u_strong" in raw else None,
            u_index=raw["u_index"].to(dev, non_blocking=True) if "u_index" in raw else None,
            u_truth=raw["u_truth"].to(dev, non_blocking=True) if "u_truth" in raw else None,
        )

    def _augmented_batch(self, raw: dict[str, Tensor]) -> Batch:
        """augment_on=trainer: the step's plain uint8 images, augmented here as whole batches, each
        image from its own sample's seed (the loader's `x_seed`, `u_seed`): the same pixels on any
        rank and in a resumed step, and a kept row's strong view made on demand is the one the full
        pass would have made."""
        cfg, dev = self.cfg, self.device
        x = apply_preset(cfg.augment, raw["x"].to(dev, non_blocking=True),
                         SampleDraws(raw["x_seed"].to(dev, non_blocking=True), VIEW_LABELED))
        u_weak = u_strong = make_strong = None
        if "u_weak" in raw:
            plain = raw["u_weak"].to(dev, non_blocking=True)
            seeds = raw["u_seed"].to(dev, non_blocking=True)
            views = self.strategy.unlabeled_views
            u_weak = self.prepare(apply_preset("weak", plain, SampleDraws(seeds, VIEW_WEAK))) if "weak" in views else None
            if "strong" in views and self.strategy.strong_on_demand():
                make_strong = lambda rows: self.prepare(  # noqa: E731
                    apply_preset(cfg.strong, plain[rows], SampleDraws(seeds[rows], VIEW_STRONG)))
            elif "strong" in views:
                u_strong = self.prepare(apply_preset(cfg.strong, plain, SampleDraws(seeds, VIEW_STRONG)))
        return Batch(
            x=self.prepare(x), y=raw["y"].to(dev, non_blocking=True), y_index=raw["y_index"].to(dev, non_blocking=True),
            u_weak=u_weak, u_strong=u_strong, make_strong=make_strong,
            u_index=raw["u_index"].to(dev, non_blocking=True) if "u_index" in raw else None,
            u_truth=raw["u_truth"].to(dev, non_blocking=True) if "u_truth" in raw else None,
        )

    def _stop(self, signum: int, stop: StopSignals) -> None:
        handler = stop.submitit_handler()
        if signum == signal.SIGUSR2 and handler is not None:
            if self.info.is_main:
                log.warning("USR2 at step %d: state saved; handing over to submitit to requeue", self.step)
                handler(signum, None)  # checkpoint() + requeue + exit
            time.sleep(120)  # other ranks wait to be ended by the requeue
        raise Interrupted(signum, self.step)

    def _labeling_pass(self) -> None:
        assert self.unlabeled is not None
        model = self._eval_model()
        candidates = self.strategy.labeling_candidates()
        t0 = time.time()
        idx, conf, pred = labeling_pass(model, self.unlabeled, self.prepare, self.cfg.image_size,
                                        self.cfg.batch_size * 4, self.workers, self.info, self.device,
                                        None if candidates is None else candidates.tolist())
        pass_s = time.time() - t0
        figures = self.vitals.gathered({"pass_s": pass_s, "mem_mb": self.vitals.peak_mem_mb(), **self.vitals.common()})
        slowest = max(v for k, v in figures.items() if k.startswith("pass_s_"))
        self.strategy.on_labeling(idx, conf, pred, self.step)
        extra = self.strategy.labeled_extra()
        if extra is not None and self.runlog is not None:
            sel, lab = extra
            truth = torch.from_numpy(self.unlabeled.hidden)[sel]
            known = truth >= 0
            scalars = {"selected": float(len(sel)), "selected_rate": len(sel) / max(1, len(self.unlabeled)),
                       "images": float(len(idx)), "images_per_s": len(idx) / max(slowest, 1e-9), **figures}
            if known.any():
                scalars["pl_acc"] = float((lab[known] == truth[known]).float().mean())
            if len(conf):
                scalars["max_conf"] = float(conf.max())
            self.runlog.scalars(self.step, scalars, "labeling")
            self.runlog.histogram(self.step, "labeling/class_counts", torch.bincount(lab, minlength=self.manifest.num_classes))
            if len(sel) or not len(idx):
                log.info("labeling pass at step %d: %d selected%s", self.step, len(sel),
                         f", pl_acc {scalars['pl_acc']:.4f}" if "pl_acc" in scalars else "")
            else:  # a warning, not an INFO line: a pool that stays empty makes the run plain supervised
                log.warning("labeling pass at step %d selected none of %d samples: the most confident scored %.4f, "
                            "under threshold=%s; the run trains on the labeled set alone until a pass selects some",
                            self.step, len(idx), scalars["max_conf"], self.cfg.threshold)

    def _log_train(self, loss: Tensor, logs: dict[str, LogValue], images_per_s: float) -> None:
        scalars, hists = pool_logs(loss, logs, self.info.world, self.device)
        self.vitals.sample()
        if self.runlog is not None:
            scalars["lr"] = self.opt.param_groups[0]["lr"]
            scalars["images_per_s"] = images_per_s
            scalars["epoch"] = self.step / self.epoch_steps
            self.runlog.scalars(self.step, scalars, "train")
            for k, v in hists.items():
                self.runlog.histogram(self.step, f"train/{k}", v)
            log.info("step %d/%d loss %.4f %s", self.step, self.cfg.steps, scalars["loss"],
                     " ".join(f"{k} {v:.3g}" for k, v in scalars.items() if k not in ("loss",)))

    def _eval_model(self) -> nn.Module:
        distributed.broadcast_buffers(self.model)
        if self.ema is not None:
            distributed.broadcast_buffers(self.ema.module)
            return self.ema.module
        return self.model

    def _evaluate(self, log_it: bool = True) -> EvalResult | None:
        split = self.val if self.val is not None else None
        if split is None:
            return None
        res = evaluate(self._eval_model(), split, self.manifest.num_classes, self.prepare, self.cfg.image_size,
                       self.cfg.batch_size * 4, self.workers, self.info, self.device)
        if res.acc > self.best["val_acc"]:
            self.best = {"val_acc": res.acc, "step": self.step}
            if self.info.is_main:
                state = run_record.best_state(self.model, self.ema.module if self.ema is not None else None, self.step,
                                              res.acc, self.cfg.model, self.manifest.classes)
                run_folder.write_best(self.run_dir, checkpoint.to_bytes(state))
        if self.runlog is not None and log_it:
            self.runlog.scalars(self.step, {"acc": res.acc, "loss": res.loss, "count": res.count,
                                            "best_acc": self.best["val_acc"]}, "val")
            self.runlog.confusion(self.step, res.confusion, self.manifest.classes)
            log.info("step %d val acc %.4f loss %.4f (%d samples)", self.step, res.acc, res.loss, res.count)
        self.last_val = res
        return res

    def _rank_figures(self) -> list[dict[str, Any]]:
        """Per rank: its own weights' sha256 (DDP keeps them equal: this shows it), peak RSS and
        the most descriptors it had open. A collective: every rank calls it in _finish."""
        digest = bytes.fromhex(checkpoint.weights_sha256(self.model.state_dict()))
        words = {f"sha{i}": float(int.from_bytes(digest[4 * i:4 * i + 4], "big")) for i in range(8)}
        figures = self.vitals.gathered({**words, **self.vitals.common()})
        out = []
        for r in range(self.info.world):
            sha = b"".join(int(figures[f"sha{i}_r{r}"]).to_bytes(4, "big") for i in range(8)).hex()
            out.append({"rank": r, "weights_sha256": sha, **{k: figures[f"{k}_r{r}"] for k in self.vitals.common()}})
        return out

    def _close_log(self) -> None:
        if getattr(self, "runlog", None) is not None:
            self.runlog.close()
            self.runlog = None

    def _finish(self) -> dict[str, Any]:
        cfg = self.cfg
        # No last_val: resumed from the final checkpoint, whose step's val line is logged already.
        val = getattr(self, "last_val", None) or self._evaluate(log_it=False)
        distributed.broadcast_buffers(self.model)
        ranks = self._rank_figures()
        test_acc = None
        if self.test is not None and (self.test.label >= 0).all() and len(self.test):
            res = evaluate(self._eval_model(), self.test, self.manifest.num_classes, self.prepare, cfg.image_size,
                           cfg.batch_size * 4, self.workers, self.info, self.device)
            test_acc = res.acc
        result = run_record.result(
            cfg, step=self.step, val=val, best=self.best, test_acc=test_acc, model=self.model, restarts=self.restarts,
            world=self.info.world, device=str(self.device), elapsed_s=self.elapsed_s + time.time() - self._t_start,
            classes=self.manifest.classes, budget_steps=self.budget.steps if self.budget is not None else None, ranks=ranks)
        if self.runlog is not None:
            metrics = {k: v for k, v in (("val_acc", result["val_acc"]), ("best_val_acc", result["best_val_acc"]),
                                         ("test_acc", test_acc)) if v is not None}
            self.runlog.hparams({k: getattr(cfg, k) for k in ("strategy", "model", "threshold", "frozen", "seed", "lr",
                                                               "batch_size", "mu", "steps", "pretrained")}, metrics)
        self._close_log()
        if self.info.is_main:
            run_folder.write_result(self.run_dir, result)
        distributed.barrier()
        return result


def run(cfg: Config) -> dict[str, Any]:
    """Train one run to its end (or to a stop signal); resumes from its folder's checkpoint."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    check_run(cfg)  # the same checks as at submit time; resolves the embedded data set
    try:
        trainer = Trainer(cfg)
        return trainer.fit()
    finally:
        # DDP's reducer holds the process group: dropped only at interpreter exit, the group outlives
        # destroy_process_group and gloo can abort the process there (seen: a rank exiting -6,
        # "terminate called without an active exception", after a run that had finished).
        trainer = None
        gc.collect()
        distributed.shutdown()
