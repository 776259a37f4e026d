"""The one training engine (Trainer); its extension point (Plugin, utils/plugins.py) is re-exported here.
train.py and train_kd.py both run it."""

import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from utils.accumulation import last_step_before
from utils.autoanchor import check_anchors
from utils.autobatch import autobatch
from utils.general import (LOGGER, check_img_size, colorstr, init_seeds, labels_to_class_weights,
                           labels_to_image_weights, yaml_load, yaml_save)
from utils.checkpoint import CheckpointError
from utils.cli import OptionError, UserError
from utils.ddp_sync import average_grads, broadcast_modules
from utils.loss import ComputeLoss, scale_loss_gains
from utils.nonfinite import DEFAULT_LIMIT, NonFiniteGuard, nonfinite_entries
from utils.optim import ModelEMA, apply_warmup, lr_lambda, restore_optimizer, smart_optimizer, warmup_iters
from utils.options import check_hyp, check_train_options
from utils.results_log import append_row, drop_rows_from
from utils.stopping import EarlyStopping, TimeBudget
from utils.torch_utils import fused_copy
from utils.plugins import Plugin, Plugins  # noqa: F401 - Plugin is part of the engine interface
from utils.resume import restore_state, resume_run

LOCAL_RANK = int(os.getenv("LOCAL_RANK", -1))
RANK = int(os.getenv("RANK", -1))
WORLD_SIZE = int(os.getenv("WORLD_SIZE", 1))
NBS = 64  # nominal batch size
RESULT_KEYS = ("train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
               "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss", "val/cls_loss",
               "x/lr0", "x/lr1", "x/lr2")


def _plain(v):
    return str(v) if isinstance(v, Path) else v


def _require_labels(dataset, where):
    """Refuse a training set without a single label (with the scan's counts)."""
    if sum(len(lb) for lb in dataset.labels):
        return
    c = dataset.counts
    raise UserError(f"train: no labels in {where} ({len(dataset)} usable images: {c['found']} found, "
                    f"{c['missing']} missing, {c['empty']} empty label files, {c['corrupt']} corrupt images); "
                    "labels are read from a labels/ folder beside images/, one <image name>.txt per image")


def clean_partial_saves(wdir):
    """Delete temp files of checkpoint saves killed mid-write (.NAME.*.tmp, see save_checkpoint)."""
    gone = []
    for f in sorted(Path(wdir).glob(".*.tmp")):
        if f.is_file():
            f.unlink(missing_ok=True)
            gone.append(f.name)
    if gone:
        LOGGER.info(f"Removed {len(gone)} unfinished checkpoint file(s) of an interrupted save in {wdir}: "
                    f"{', '.join(gone[:5])}{' ...' if len(gone) > 5 else ''}")
    return gone


class Trainer:
    """Trainer(opt, hyp, plugins=[...]).run() -> final (P, R, mAP50, mAP50-95, val box, obj, cls).

    Every hook of every plugin is called, in list order; `plugin=p` is shorthand for `plugins=[p]`.
    On opt.resume the engine restores the run (options, hyp, plugin options, weights and state) itself.
    """

    def __init__(self, opt, hyp, plugins=(), plugin=None):
        self.opt = opt
        self.hyp_in = hyp
        self.plugins = Plugins([*plugins, *([plugin] if plugin is not None else [])])
        self.rank, self.local_rank, self.world_size = RANK, LOCAL_RANK, WORLD_SIZE
        self.is_main_process = RANK in (-1, 0)
        self.resume_ckpt = None

    # ------------------------------------------------------------------ setup
    def _setup_device(self):
        from utils.torch_utils import select_device

        opt = self.opt
        if self.world_size > 1:
            use_cuda = torch.cuda.is_available() and str(opt.device).lower() != "cpu"
            if use_cuda:
                torch.cuda.set_device(self.local_rank)
                self.device = torch.device("cuda", self.local_rank)
            else:
                self.device = torch.device("cpu")
            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            shared = [str(self.save_dir)]
            dist.broadcast_object_list(shared, 0)  # every rank uses rank 0's run folder
            self.save_dir = Path(shared[0])
            if opt.batch_size % self.world_size:
                raise ValueError(f"--batch-size {opt.batch_size} must be a multiple of WORLD_SIZE {self.world_size}")
        else:
            self.device = select_device(opt.device, batch_size=opt.batch_size)
        self.cuda = self.device.type == "cuda"
        self._setup_precision()
        cl = getattr(opt, "channels_last", None)
        self.channels_last = (self.device.type == "cpu") if cl is None else bool(cl)

    def _setup_precision(self):
        """--precision (auto by default): the capability-based choice, rank 0's under DDP, logged once."""
        from utils.precision import choose_precision, requested_precision

        chosen = [choose_precision(requested_precision(self.opt), self.device.type) if self.is_main_process
                  else None]
        if self.world_size > 1:
            dist.broadcast_object_list(chosen, 0)  # every rank trains in the precision rank 0 chose
        self.precision = chosen[0]
        self.opt.precision = self.precision.name  # recorded in opt.yaml and last.pt: a resumed run keeps it
        self.amp = self.precision.grad_scaler  # float16 autocast + GradScaler (CUDA)
        self.autocast_on = self.precision.autocast
        self.autocast_dtype = self.precision.autocast_dtype or torch.float32
        if self.is_main_process:
            LOGGER.info(f"precision: {self.precision.name} ({self.precision.reason})")

    def _load_hyp(self):
        hyp = self.hyp_in
        if isinstance(hyp, (str, Path)):
            hyp = yaml_load(hyp)
            if not hyp:
                raise ValueError(f"{self.hyp_in}: empty hyperparameter file")
        check_hyp(hyp, self.hyp_in if isinstance(self.hyp_in, (str, Path)) else "hyp")
        self.hyp_orig = dict(hyp)
        self.hyp = dict(hyp)

    def _build_model(self):
        from models.yolo import DetectionModel
        from utils.checkpoint import build_stored_model, load_checkpoint, transfer_weights
        from utils.dataset_yaml import check_dataset

        opt = self.opt
        if self.is_main_process:
            self.data_dict = check_dataset(opt.data)
        if self.world_size > 1:  # others wait for rank 0 (which may generate the synthetic set)
            dist.barrier()
            if not self.is_main_process:
                self.data_dict = check_dataset(opt.data)
        d = self.data_dict
        self.nc = 1 if opt.single_cls else int(d["nc"])
        self.names = {0: "item"} if opt.single_cls and len(d["names"]) != 1 else dict(d["names"])
        weights = str(opt.weights or "")
        anchors = self.hyp.get("anchors")
        if self.resume_ckpt is not None:
            self.model = build_stored_model(self.resume_ckpt["model"]["yaml"], weights, nc=self.nc,
                                            state=self.resume_ckpt["model"]["state_dict"])
            self.model.load_state_dict(self.resume_ckpt["model"]["state_dict"])
        elif weights:
            if opt.cfg:
                self.model = DetectionModel(opt.cfg, ch=3, nc=self.nc, anchors=anchors)
            else:
                stored = load_checkpoint(weights)["model"]
                self.model = build_stored_model(stored["yaml"], weights, nc=self.nc, anchors=anchors,
                                                state=stored["state_dict"])
            transfer_weights(self.model, weights, exclude=("anchor",) if (opt.cfg or anchors) else ())
        else:
            if not opt.cfg:
                raise ValueError("train: give --cfg (a model YAML) or --weights (a checkpoint)")
            self.model = DetectionModel(opt.cfg, ch=3, nc=self.nc, anchors=anchors)
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        freeze = [f"model.{x}." for x in (opt.freeze if len(opt.freeze) > 1 else range(opt.freeze[0]))]
        for k, v in self.model.named_parameters():
            v.requires_grad = not any(x in k for x in freeze)
        self.gs = max(int(self.model.stride.max()), 32)
        self.imgsz = check_img_size(opt.imgsz, self.gs, floor=self.gs * 2)
        self.batch_size = opt.batch_size
        if self.batch_size == -1:
            self.batch_size = autobatch(self.model, self.imgsz, self.device)

    def _build_data(self):
        from utils.dataloaders import create_dataloader

        opt, hyp = self.opt, self.hyp
        d = self.data_dict
        bs = self.batch_size // self.world_size
        nc = int(d["nc"])  # rows with class ids outside 0..nc-1 are dropped per file, the file named once
        self.train_loader, self.dataset = create_dataloader(
            d["train"], self.imgsz, bs, self.gs, opt.single_cls, hyp=hyp, augment=True,
            cache=None if opt.cache == "val" else opt.cache, rect=opt.rect, rank=self.local_rank,
            workers=opt.workers, image_weights=opt.image_weights, quad=opt.quad, prefix=colorstr("train: "),
            shuffle=True, seed=opt.seed, nc=nc, background_workers=self.device.type == "cpu")
        labels = [lb for lb in self.dataset.labels]
        _require_labels(self.dataset, d["train"])
        self.val_loader = None
        if self.is_main_process:
            val_cache = None if opt.noval else "ram" if opt.cache == "val" else opt.cache
            self.val_loader = create_dataloader(
                d["val"], self.imgsz, bs * 2, self.gs, opt.single_cls, hyp=hyp,
                cache=val_cache, rect=True, rank=-1, workers=opt.workers * 2, pad=0.5,
                prefix=colorstr("val: "), nc=nc, background_workers=self.device.type == "cpu")[0]
            if self.resume_ckpt is None:
                if not opt.noautoanchor:
                    check_anchors(self.dataset, self.model, thr=hyp["anchor_t"], imgsz=self.imgsz)
                det = self.model.model[-1]
                det.anchors.copy_(det.anchors.half().float())  # the precision best.pt (float16) keeps
                if not opt.noplots and labels:
                    from utils.plots import plot_labels
                    plot_labels(np.concatenate(labels, 0), self.names, self.save_dir)

    def _scale_hyp(self):
        hyp, opt = self.hyp, self.opt
        scale_loss_gains(hyp, self.model.model[-1].nl, self.nc, self.imgsz)
        hyp["label_smoothing"] = opt.label_smoothing
        self.nbs = int(hyp.get("nbs", NBS))  # nominal batch size: optional hyp key, as the ultralytics trainer's
        self.accumulate = max(round(self.nbs / self.batch_size), 1)
        hyp["weight_decay"] *= self.batch_size * self.accumulate / self.nbs
        m = self.model
        m.nc, m.hyp, m.names = self.nc, hyp, self.names
        m.class_weights = labels_to_class_weights(self.dataset.labels, self.nc).to(self.device) * self.nc

    def _build_optim(self):
        opt, hyp = self.opt, self.hyp
        self.extra_modules = self.plugins.trainable_modules()
        self.optimizer = smart_optimizer(self.model, opt.optimizer, hyp["lr0"], hyp["momentum"], hyp["weight_decay"],
                                         extra_modules=self.extra_modules)
        self.lf = lr_lambda(self.epochs, hyp["lrf"], opt.cos_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)
        self.ema = ModelEMA(self.model) if self.is_main_process else None
        self.start_epoch, self.best_fitness = 0, 0.0
        ck = self.resume_ckpt
        if ck is not None:
            if ck.get("optimizer") is not None:
                restore_state(opt.weights, "optimizer", lambda: restore_optimizer(self.optimizer, ck["optimizer"]))
            self.best_fitness = ck.get("best_fitness") or 0.0
            if self.ema is not None and ck.get("ema") is not None:
                restore_state(opt.weights, "ema", lambda: self.ema.ema.load_state_dict(ck["ema"]))
                self.ema.updates = int(ck.get("updates") or 0)
            restore_state(opt.weights, "plugin", lambda: self.plugins.load_state_dict(ck.get("plugin")))
            self.start_epoch = int(ck["epoch"]) + 1
            if self.start_epoch <= 0 or self.start_epoch >= self.epochs:
                raise ValueError(f"{opt.weights}: training to {self.epochs} epochs is already done "
                                 f"(checkpoint epoch {ck['epoch']}); pass a larger --epochs to extend it")
            for g in self.optimizer.param_groups:  # lr of the next epoch (new schedule when --epochs grew)
                g["lr"] = g["initial_lr"] * self.lf(self.start_epoch)
            LOGGER.info(f"Resuming training from {opt.weights} from epoch {self.start_epoch} to {self.epochs} total epochs")
        self.scheduler.last_epoch = self.start_epoch - 1

    def _wrap_ddp(self):
        self.train_model = self.model
        if self.world_size > 1:
            if self.opt.sync_bn and self.cuda:
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                self.train_model = self.model
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.train_model = DDP(self.model, device_ids=[self.local_rank] if self.cuda else None,
                                   output_device=self.local_rank if self.cuda else None)
            broadcast_modules(self.extra_modules)  # plugin modules (KD adapters) start as rank 0's

    # ------------------------------------------------------------------ run
    def run(self):
        try:
            return self._run()
        finally:
            try:
                self.plugins.teardown(self)
            finally:
                if self.world_size > 1 and dist.is_initialized():
                    dist.destroy_process_group()

    def _run(self):
        opt = self.opt
        if opt.resume:  # the one read of last.pt: options, hyp, then weights and state below
            self.resume_ckpt, self.hyp_in = resume_run(opt, self.plugins.items)
        if getattr(opt, "qat", False):  # --qat (also restored by --resume): the last plugin, for its saved state
            from utils.deploy.qat import QATPlugin
            self.plugins.items.append(QATPlugin())
        self.save_dir = Path(opt.save_dir)
        try:
            check_train_options(opt)
        except OptionError as e:
            if opt.resume:  # the values came from last.pt, not from this command line
                raise CheckpointError(f"{opt.weights}: a saved option is out of range: {e}") from None
            raise
        self._load_hyp()
        self._setup_device()
        self.epochs = opt.epochs
        self.wdir = self.save_dir / "weights"
        self.last, self.best = self.wdir / "last.pt", self.wdir / "best.pt"
        if self.is_main_process:
            self.wdir.mkdir(parents=True, exist_ok=True)
            clean_partial_saves(self.wdir)
            yaml_save(self.save_dir / "hyp.yaml", self.hyp_orig)
            yaml_save(self.save_dir / "opt.yaml", {k: _plain(v) for k, v in vars(opt).items()})
        init_seeds(opt.seed + 1 + max(self.rank, 0), deterministic=True)
        self._build_model()
        self._build_data()
        self._scale_hyp()
        self.plugins.call("setup", self)
        self._build_optim()
        if self.is_main_process and self.start_epoch > 0:
            n = drop_rows_from(self.save_dir / "results.csv", self.start_epoch)
            if n:
                LOGGER.info(f"results.csv: dropped {n} row(s) of epoch {self.start_epoch} and later "
                            "(written before the interruption, trained again now)")
        self._wrap_ddp()
        self.plugins.call("on_train_start", self)
        self.tb = self._tensorboard()
        results = self._train_loop()
        if self.is_main_process:
            results = self._final_validation(results)
        return results

    def _tensorboard(self):
        if not self.is_main_process:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
            return SummaryWriter(str(self.save_dir))
        except Exception:  # tensorboard is optional
            return None

    def _epoch_seed(self, epoch):
        """Reseed every epoch so that a resumed run repeats the uninterrupted one exactly."""
        seed = (self.opt.seed + 1 + max(self.rank, 0)) * 1_000_003 + epoch
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)
        gen = getattr(self.train_loader, "generator", None)
        if gen is not None:
            gen.manual_seed(seed)
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def _train_loop(self):
        """Every epoch from start_epoch: train it, then the end-of-epoch work -> last results tuple."""
        self._prepare_loop()
        results = (0, 0, 0, 0, 0, 0, 0)
        t0 = time.time()
        if self.is_main_process:
            LOGGER.info(f"Image sizes {self.imgsz} train, {self.imgsz} val\nStarting training for {self.epochs} epochs...")
        if self.budget is not None:
            self.budget.start()
        epoch = self.start_epoch
        while epoch < self.epochs:  # --time may change self.epochs after each epoch
            mloss = self._train_epoch(epoch)
            results, stop = self._end_epoch(epoch, mloss, results)
            if stop or epoch + 1 >= self.epochs:
                break
            epoch += 1
        if self.is_main_process:
            LOGGER.info(f"\n{epoch - self.start_epoch + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")
        return results

    def _prepare_loop(self):
        """Loss, grad scaler, early stopping, the non-finite guard and the parameters to clip."""
        self.nb = len(self.train_loader)
        self.nw = warmup_iters(self.hyp["warmup_epochs"], self.nb)
        self.compute_loss = ComputeLoss(self.model)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.stopper = EarlyStopping(self.opt.patience)
        hours = getattr(self.opt, "time", None)
        self.budget = TimeBudget(hours, self.start_epoch) if hours else None
        self.loss_names = self.plugins.loss_names
        self.maps = np.zeros(self.nc)
        self.clip_params = [p for p in self.model.parameters() if p.requires_grad]
        self.extra_params = [p for m in self.extra_modules for p in m.parameters() if p.requires_grad]
        self.guard = NonFiniteGuard(self.model, self.hyp.get("nonfinite_limit", DEFAULT_LIMIT),
                                    lr0=self.hyp_orig["lr0"], distributed=self.world_size > 1,
                                    check_grads=not self.amp)
        self.accumulate_now = self.accumulate  # grows during warmup
        self.last_opt_step = last_step_before(self.start_epoch * self.nb, self.nw, self.nbs, self.batch_size)

    def _train_epoch(self, epoch):
        """One pass over the training set -> mean losses (box, obj, cls, plugin terms) of its finite batches."""
        self.train_model.train()
        self._epoch_seed(epoch)
        if self.opt.image_weights and self.world_size == 1:
            self._resample_images()
        mloss = torch.zeros(3 + len(self.loss_names), device=self.device)
        n_ok = torch.zeros((), device=self.device)  # batches with a finite loss (the mean skips the others)
        pbar = self._progress_bar()
        self.optimizer.zero_grad()
        self.guard.start_window()
        self.last_log = 0.0
        for i, (imgs, targets, paths, *extra) in pbar:  # extra: shapes[, n_labeled] (utils/unlabeled.py)
            imgs, loss_items = self._train_step(epoch, i, imgs, targets, extra[1] if len(extra) > 1 else None)
            if self.is_main_process:
                ok = torch.isfinite(loss_items).all()
                n_ok = n_ok + ok
                mloss = torch.where(ok, mloss + (loss_items - mloss) / n_ok.clamp(min=1), mloss)
                self._show_progress(pbar, epoch, i, mloss, imgs, targets, paths)
        if self.is_main_process:  # no finite batch at all: the epoch's train losses are unknown, not 0
            mloss = torch.where(n_ok > 0, mloss, torch.full_like(mloss, float("nan")))
        return mloss

    def _resample_images(self):
        """--image-weights: draw this epoch's images by their classes' weights (poor mAP -> more often)."""
        cw = self.model.class_weights.cpu().numpy() * (1 - self.maps) ** 2 / self.nc
        iw = labels_to_image_weights(self.dataset.labels, self.nc, cw)
        self.dataset.indices = random.choices(range(len(self.dataset)), weights=iw, k=len(self.dataset))

    def _progress_bar(self):
        pbar = enumerate(self.train_loader)
        if self.is_main_process:
            LOGGER.info(("\n" + "%11s" * (7 + len(self.loss_names))) %
                        ("Epoch", "GPU_mem", "box_loss", "obj_loss", "cls_loss", *self.loss_names, "Instances", "Size"))
            pbar = tqdm(pbar, total=self.nb, bar_format="{l_bar}{bar:10}{r_bar}")
        return pbar

    def _train_step(self, epoch, i, imgs, targets, n_labeled=None):
        """Forward, loss (detection + every plugin's), backward; an optimiser step when the accumulation
        window is full -> (input batch as trained, loss items). n_labeled: only the first n_labeled images
        have labels (the rest are unlabeled, for the plugins' losses): the detection loss scores those."""
        ni = i + self.nb * epoch
        imgs = self._prepare_batch(imgs, ni, epoch)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_on):
            self.plugins.call("before_forward", imgs, targets)
            pred = self.train_model(imgs)
            loss, loss_items = self.compute_loss(pred, targets.to(self.device), labeled=n_labeled)
            ploss, pitems = self.plugins.step_loss(imgs, targets, pred)
            if ploss is not None:
                loss = loss + ploss
            if self.loss_names:
                extra = [torch.as_tensor(pitems.get(n, 0.0), device=self.device).detach().float().reshape(())
                         for n in self.loss_names]
                loss_items = torch.cat((loss_items, torch.stack(extra)))
            if self.world_size > 1:
                loss = loss * self.world_size
            if self.opt.quad:
                loss = loss * 4.0
        self.scaler.scale(loss).backward()
        self.guard.note_loss(loss)
        if ni - self.last_opt_step >= self.accumulate_now:  # upstream's count: no extra step at an epoch's end
            self._optimizer_step(epoch, max(i - (ni - self.last_opt_step) + 1, 0))
            self.last_opt_step = ni
        return imgs, loss_items

    def _prepare_batch(self, imgs, ni, epoch):
        """uint8 -> float [0, 1] on the device; warmup lr/momentum; --multi-scale resize; channels_last."""
        imgs = imgs.to(self.device, non_blocking=True).float() / 255
        if ni <= self.nw:
            self.accumulate_now = apply_warmup(self.optimizer, ni, self.nw, epoch, self.lf, self.hyp, self.nbs,
                                               self.batch_size)
        if self.opt.multi_scale:
            sz = random.randrange(int(self.imgsz * 0.5), int(self.imgsz * 1.5) + self.gs) // self.gs * self.gs
            sf = sz / max(imgs.shape[2:])
            if sf != 1:
                ns = [math.ceil(x * sf / self.gs) * self.gs for x in imgs.shape[2:]]
                imgs = F.interpolate(imgs, size=ns, mode="bilinear", align_corners=False)
        if self.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        return imgs

    def _show_progress(self, pbar, epoch, i, mloss, imgs, targets, paths):
        """The bar's running means (host sync at most every 0.5 s) and train_batch0-2.jpg."""
        now = time.time()
        if now - self.last_log > 0.5 or i == self.nb - 1:
            self.last_log = now
            mem = f"{torch.cuda.memory_reserved(self.device) / 1e9 if self.cuda else 0:.3g}G"
            pbar.set_description(("%11s" * 2 + "%11.4g" * (len(mloss) + 2)) %
                                 (f"{epoch}/{self.epochs - 1}", mem, *mloss.tolist(), targets.shape[0], imgs.shape[-1]))
        ni = i + self.nb * epoch
        if not self.opt.noplots and ni < 3:
            from utils.plots import plot_images
            plot_images(imgs.detach().float().cpu(), targets, paths, self.save_dir / f"train_batch{ni}.jpg",
                        names=self.names)

    def _end_epoch(self, epoch, mloss, results):
        """LR schedule step; on rank 0 validation, results.csv row and checkpoints; plugins' on_epoch_end;
        early stopping agreed by all ranks -> (results, stop)."""
        if self.budget is not None:
            self._follow_budget(epoch)
            self.budget.end_work_started()
        lr = [g["lr"] for g in self.optimizer.param_groups]
        self.scheduler.step()
        stop = False
        if self.is_main_process:
            results, stop = self._validate_log_save(epoch, mloss, results, lr)
        self.plugins.call("on_epoch_end", self, epoch)
        if self.world_size > 1:
            flag = [stop]
            dist.broadcast_object_list(flag, 0)
            stop = flag[0]
        if self.budget is not None:
            self.budget.end_work_finished()
        return results, stop

    def _follow_budget(self, epoch):
        """--time: set the total epochs to what fits in the budget (rank 0's plan on every rank) and make
        the LR schedule span it."""
        total = [self.budget.plan(epoch)]
        if self.world_size > 1:
            dist.broadcast_object_list(total, 0)
        if total[0] != self.epochs:
            if self.is_main_process and self.budget.worth_logging(total[0]):
                LOGGER.info(self.budget.describe(epoch, total[0]))
            self.epochs = self.opt.epochs = total[0]
            self.lf = lr_lambda(self.epochs, self.hyp["lrf"], self.opt.cos_lr)
            self.scheduler.lr_lambdas = [self.lf] * len(self.optimizer.param_groups)

    def _validate_log_save(self, epoch, mloss, results, lr):
        """EMA attributes, validation (each epoch, or the last with --noval), fitness, best/last.pt."""
        from utils.metrics import fitness

        self.ema.update_attr(self.model)
        final_epoch = epoch + 1 == self.epochs
        validated = not self.opt.noval or final_epoch
        if validated:
            results, self.maps = self._validate(self.ema.ema)
        fi = float(fitness(np.array(results).reshape(1, -1))[0])
        stop = self.stopper(epoch, fi) if validated else False
        improved = fi > self.best_fitness
        if improved:
            self.best_fitness = fi
        self._log_epoch(epoch, mloss.tolist(), list(results), lr, self.loss_names)
        if not self.opt.nosave or final_epoch:
            self._save(epoch, improved or not self.best.exists())
        return results, stop

    def _optimizer_step(self, epoch, first_batch):
        """Unscale, clip, step and update the EMA, unless the guard finds a non-finite loss or gradient in
        the accumulation window (then its gradients are dropped and the step is skipped)."""
        scaler, clip_params, extra_params = self.scaler, self.clip_params, self.extra_params
        if self.world_size > 1:  # plugin modules are outside DDP: average their grads here
            average_grads(extra_params, self.world_size)
        scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(clip_params + extra_params, max_norm=10.0)
        try:
            if self.guard.check_step(norm, epoch, first_batch):
                scaler.step(self.optimizer)
                if self.ema is not None:
                    self.ema.update(self.model)
        finally:
            scaler.update()
            self.optimizer.zero_grad()
            self.guard.start_window()

    def _validate(self, model, plots=False, verbose=False, final=False):
        """Validate a fused copy of model (the same outputs, no BatchNorm pass): each epoch in the training
        precision (bf16 autocast when training in bf16, as upstream validates in float16 while training with
        AMP), the final best.pt in float32 (float16 with CUDA AMP, as upstream), the numbers users read."""
        from utils.evaluation import validate

        bf16 = self.precision.name == "bf16" and not final
        results, maps, *_ = validate(fused_copy(model), self.val_loader, self.data_dict, half=self.amp,
                                     single_cls=self.opt.single_cls, save_dir=self.save_dir, plots=plots,
                                     verbose=verbose, compute_loss=self.compute_loss,
                                     autocast_dtype=torch.bfloat16 if bf16 else None)
        return tuple(float(x) for x in results), np.asarray(maps)

    def _log_epoch(self, epoch, mloss, results, lr, names):
        keys = list(RESULT_KEYS) + [f"train/{n}" for n in names]
        vals = mloss[:3] + results + lr + mloss[3:]
        append_row(self.save_dir / "results.csv", keys, epoch, vals)
        if self.tb is not None:
            for k, v in zip(keys, vals):
                self.tb.add_scalar(k, v, epoch)

    def _save(self, epoch, is_best):
        from utils.checkpoint import make_checkpoint, save_checkpoint

        opt_plain = {k: _plain(v) for k, v in vars(self.opt).items()}
        ckpt = make_checkpoint(self.model, ema=self.ema.ema, updates=self.ema.updates, optimizer=self.optimizer,
                               epoch=epoch, best_fitness=self.best_fitness, opt=opt_plain, hyp=self.hyp_orig,
                               plugin=self.plugins.state_dict())
        if not self._write(ckpt, self.last, epoch):
            return
        if is_best:  # EMA in float16, no optimiser, no plugin modules
            self._write(make_checkpoint(self.ema.ema, epoch=-1, best_fitness=self.best_fitness, opt=opt_plain,
                                        hyp=self.hyp_orig, half=True), self.best, epoch)
        if self.opt.save_period > 0 and (epoch + 1) % self.opt.save_period == 0:
            save_checkpoint(ckpt, self.wdir / f"epoch{epoch}.pt")

    def _write(self, ckpt, path, epoch):
        """Save unless a tensor holds NaN/inf (float16 best.pt overflows too): the file keeps its last
        finite state then. -> saved or not."""
        from utils.checkpoint import save_checkpoint

        bad = nonfinite_entries(ckpt)
        if bad:
            LOGGER.warning(f"WARNING: epoch {epoch}: {path.name} not saved, non-finite values in {', '.join(bad)}"
                           f"{' ...' if len(bad) >= 5 else ''}; {path.name} keeps its last finite state, if any")
            return False
        save_checkpoint(ckpt, path)
        return True

    def _final_validation(self, results):
        from utils.checkpoint import load_model

        if self.best.exists():
            LOGGER.info(f"\nValidating {self.best}...")
            model = load_model(self.best, device=self.device)
            model.names = self.names
            results, _ = self._validate(model, plots=not self.opt.noplots, verbose=True, final=True)
        if not self.opt.noplots and (self.save_dir / "results.csv").exists():
            from utils.plots import plot_results
            plot_results(file=self.save_dir / "results.csv")
        if self.tb is not None:
            self.tb.close()
        LOGGER.info(f"Results saved to {colorstr('bold', self.save_dir)}")
        return results

