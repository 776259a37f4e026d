"""Distiller: the knowledge-distillation plug-in of the training engine (SPEC.md section 4)."""

from pathlib import Path

import torch

from utils.cli import UserError
from utils.general import LOGGER, colorstr
from utils.plugins import Plugin
from utils.torch_utils import de_parallel

from .adapters import AdapterSet
from .config import KDConfig, check_teacher
from .features import FEATURE_LOSSES, FeatureContext
from .health import KDHealth
from .losses import output_kd_loss, teacher_better_gate
from .masks import gt_class_cells
from .pairing import pair_layers
from .taps import FeatureTaps

KD_HYP_DEFAULTS = {"giou": 0.05, "kd": 1.0}


def _teacher_raw(out):
    """Raw Detect maps from an eval-mode forward ((decoded, raw)) or a train-mode list."""
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], (list, tuple)):
        return list(out[1])
    return list(out)


class IncompatibleModels(UserError, ValueError):
    """Teacher and student cannot be distilled together (nc, names, strides or anchors)."""


def _anchors_px(detect):
    """Anchors of a Detect layer in input pixels, rounded for messages."""
    return (detect.anchors * detect.stride.view(-1, 1, 1)).float().cpu().round(decimals=1).tolist()


def prepare_teacher(teacher, channels_last=False):
    """The frozen teacher as a KD step runs it: eval, no gradients, each BatchNorm folded into its conv, weights
    channels_last when the engine feeds channels_last batches (CPUs): the same outputs, a faster forward
    (benchmarks/kd_teacher_speed.py)."""
    teacher.eval().requires_grad_(False)
    teacher.fuse(verbose=False)
    return teacher.to(memory_format=torch.channels_last) if channels_last else teacher


class Distiller(Plugin):
    """Adds alpha * L_kd + beta * L_feat to the detection loss.

    Logged terms (results.csv 'train/<name>', per image like box/obj/cls): 'kd' (output KD)
    and one column per selected feature loss, each as it enters the total loss.
    With cfg.unlabeled, setup() appends unlabeled images to every training batch (utils/unlabeled.py):
    the KD terms cover them, the engine's detection loss does not. Feature losses that use ground-truth
    boxes (wat, fgfi) see none on them: background for wat's mask, no imitation region for fgfi.
    """

    def __init__(self, cfg: KDConfig):
        if not isinstance(cfg, KDConfig):
            raise TypeError(f"Distiller takes a KDConfig (KDConfig.from_opt(opt)), got {type(cfg).__name__}")
        self._use(cfg)
        self.teacher = self.adapters = None
        self.t_taps = self.s_taps = None
        self._teacher_out = None  # the teacher's raw outputs on the batch before_forward saw
        self._gate_sums = torch.zeros(2)  # --kd-gate: kept and total teacher-objectness weight this epoch
        self.gate_history = []  # (epoch, kept share)
        self.pairs = {}  # feature name -> [(t, s, stride, c_t, c_s)]
        self._pending_state = None
        self.health = None
        self.unlabeled = None  # the SemiLoader of --unlabeled (utils/unlabeled.py)

    def _use(self, cfg):
        self.cfg = cfg
        self.loss_names = (("kd",) if cfg.kd else ()) + cfg.feat

    def restore_options(self, opt, saved):
        """--resume: the interrupted run's KD options (older key names read too), written back to opt."""
        self._use(KDConfig.resumed(opt, saved))
        check_teacher(self.cfg.teacher_weight)
        self.cfg.store(opt)

    # ------------------------------------------------------------------ setup
    def setup(self, engine):
        from utils.checkpoint import load_model

        cfg, run_opt = self.cfg, getattr(engine, "opt", None)
        self.engine = engine
        student = de_parallel(engine.model)
        self.student = student
        device = next(student.parameters()).device
        self.teacher_file = str(cfg.teacher_weight)
        self.student_file = str(getattr(run_opt, "weights", "") or getattr(run_opt, "cfg", "") or "student")
        teacher = prepare_teacher(load_model(self.teacher_file, device=device), getattr(engine, "channels_last", False))
        self.teacher = teacher
        if not getattr(run_opt, "weights", ""):  # a pretrained student keeps the anchors its head learnt
            self._adopt_teacher_anchors()
        self.check_compatible()
        self._read_hyp()
        self.nc = int(student.nc)
        self._build_pairs()
        specs = {(s, c_s, c_t) for name in cfg.feat if FEATURE_LOSSES[name].adapter
                 for _, s, _, c_t, c_s in self.pairs[name]}
        self.adapters = AdapterSet(sorted(specs)).to(device) if specs else None
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)
        t_idx = sorted({t for p in self.pairs.values() for t, *_ in p})
        self.t_taps = FeatureTaps(teacher, t_idx) if t_idx else None
        amp = bool(getattr(engine, "amp", False)) and device.type == "cuda"
        if amp:
            teacher.half()  # same precision as the autocast student forward; BN stays frozen (eval)
        LOGGER.info(f"{colorstr('distill:')} teacher {self.teacher_file} -> student {self.student_file}; "
                    f"kd={'off' if not cfg.kd else cfg.kd_loss_selected} alpha={cfg.alpha} beta={cfg.betas or '-'} "
                    f"feat={','.join(cfg.feat) or 'none'} pairs={ {k: [(t, s) for t, s, *_ in v] for k, v in self.pairs.items()} }")
        if cfg.unlabeled:  # unlabeled images appended to every batch: KD on them, no detection loss
            from utils.unlabeled import attach_unlabeled
            self.unlabeled = attach_unlabeled(engine, cfg.unlabeled, cfg.unlabeled_ratio)

    def _build_pairs(self):
        for name in self.cfg.feat:
            pairs = pair_layers(self.teacher, self.student, roles=FEATURE_LOSSES[name].roles,
                                override=self.cfg.kd_layers)
            if not pairs:
                raise ValueError(f"--feat {name}: no teacher/student layers share a stride; use --kd-layers t:s")
            if FEATURE_LOSSES[name].check_pairs is not None:
                FEATURE_LOSSES[name].check_pairs(self.teacher, pairs)
            self.pairs[name] = pairs

    def _adopt_teacher_anchors(self):
        """A student from scratch takes the teacher's anchors (e.g. after the teacher's AutoAnchor) when
        the levels and strides agree: output KD compares the two heads anchor by anchor."""
        td, sd = self.teacher.model[-1], self.student.model[-1]
        same_levels = td.anchors.shape == sd.anchors.shape and \
            self.teacher.stride.flatten().tolist() == self.student.stride.flatten().tolist()
        if same_levels and not torch.equal(td.anchors.float().cpu(), sd.anchors.float().cpu()):
            with torch.no_grad():
                sd.anchors.copy_(td.anchors.to(sd.anchors.device, sd.anchors.dtype))
            LOGGER.info(f"{colorstr('distill:')} student {self.student_file} (from scratch) takes the anchors of teacher "
                        f"{self.teacher_file}: {_anchors_px(td)} px")

    def check_compatible(self):
        """Fail (IncompatibleModels) with a message naming both files when nc, names, strides or anchors differ
        (a pretrained student whose anchors are not the teacher's: both sets named, in pixels)."""
        t, s = self.teacher, self.student
        td, sd = t.model[-1], s.model[-1]
        problems = []
        if int(t.nc) != int(s.nc):
            problems.append(f"nc {t.nc} vs {s.nc}")
        t_names = list(dict(t.names).values()) if isinstance(t.names, dict) else list(t.names)
        s_names = list(dict(s.names).values()) if isinstance(s.names, dict) else list(s.names)
        if not problems and t_names != s_names:
            problems.append(f"names {t_names} vs {s_names}")
        ts, ss = t.stride.flatten().tolist(), s.stride.flatten().tolist()
        if ts != ss:
            problems.append(f"strides {ts} vs {ss}")
        elif td.anchors.shape != sd.anchors.shape or not torch.allclose(
                (td.anchors * td.stride.view(-1, 1, 1)).float().cpu(), (sd.anchors * sd.stride.view(-1, 1, 1)).float().cpu(),
                rtol=1e-3, atol=1e-2):
            problems.append(f"anchors (pixels) {_anchors_px(td)} vs {_anchors_px(sd)} (a --weights student keeps "
                            "its own anchors: distil from a teacher with the same anchors, or train the student "
                            "from scratch (--cfg) to take the teacher's)")
        if problems:
            raise IncompatibleModels(f"teacher {self.teacher_file} and student {self.student_file} are incompatible "
                             f"(teacher vs student): {'; '.join(problems)}")

    def _read_hyp(self):
        """The detection loss's scaled gains (model.hyp, set by the engine) + giou/kd defaults."""
        hyp = getattr(self.student, "hyp", None) or getattr(self.engine, "hyp", None) or {}
        for k, v in KD_HYP_DEFAULTS.items():
            hyp.setdefault(k, v)
        self.hyp = hyp

    def on_train_start(self, engine):
        """Before step 1, after the engine copied the student (EMA) and wrapped it (DDP): check the
        pair again and tap the student here, so that no copy carries the hooks and the feature terms
        count from the first step (also the first step after a resume)."""
        self.student = de_parallel(engine.model)
        self.check_compatible()
        self._read_hyp()
        s_idx = sorted({s for p in self.pairs.values() for _, s, *_ in p})
        if s_idx and self.s_taps is None:
            self.s_taps = FeatureTaps(self.student, s_idx)
        self._start_health(engine)

    def _start_health(self, engine):
        """The KD health check of the first steps (main process; results in the run folder)."""
        from utils.loss import ComputeLoss

        self.health = None
        if (self.cfg.kd or self.cfg.feat) and getattr(engine, "is_main_process", True):
            self.health = KDHealth(p for p in self.student.parameters() if p.requires_grad)
            self._det_loss = ComputeLoss(self.student)
            self._health_dir = getattr(engine, "save_dir", None)

    def trainable_modules(self):
        return [self.adapters] if self.adapters is not None else []

    # ------------------------------------------------------------------ step
    def step_loss(self, imgs, targets, preds):
        """alpha * L_kd + sum of beta_f * L_f, and the logged per-image items."""
        bs = imgs.shape[0]
        total = torch.zeros((), device=imgs.device)
        items, weighted = {}, {}
        for name, value in self.loss_terms(imgs, targets, preds).items():
            weighted[name] = (self.cfg.alpha if name == "kd" else self.cfg.betas[name]) * value
            total = total + weighted[name]
            items[name] = (weighted[name] / bs).detach()
        if self.health is not None and self.health.active:
            self._check_health(targets, preds, weighted)
        return total, items

    def _check_health(self, targets, preds, weighted):
        """One step of the health check; its report once the first steps are measured."""
        labeled = self.unlabeled.n_labeled if self.unlabeled is not None else None
        det, _ = self._det_loss(preds, targets.to(preds[0].device), labeled=labeled)
        self.health.record(det, weighted)
        if not self.health.active:
            self._report_health()

    def _report_health(self):
        """Log and save the health check once (kd_health.json), then stop measuring."""
        if self.health is not None and self.health.n:
            self.health_summary = self.health.report(self._health_dir)
        self.health = None

    def on_epoch_end(self, engine, epoch):
        if self.cfg.kd and self.cfg.kd_gate == "teacher_better":
            main = getattr(engine, "is_main_process", True)
            self._log_gates(epoch, getattr(engine, "save_dir", None) if main else None)
        self._report_health()  # an epoch shorter than the health window: report what it measured

    def before_forward(self, imgs, targets):
        """The teacher's forward on this batch, before the student's (its raw outputs kept for step_loss)."""
        self._teacher_out = self._run_teacher(imgs)

    def _run_teacher(self, imgs):
        """Raw teacher outputs on imgs (no graph); its tapped features land in t_taps."""
        imgs_t = imgs.half() if next(self.teacher.parameters()).dtype == torch.float16 else imgs
        with torch.no_grad():
            return _teacher_raw(self.teacher(imgs_t))

    def loss_terms(self, imgs, targets, preds):
        """The unweighted terms of this step, batch-scaled like the detection loss (bs * mean):
        {'kd': L_kd (when on), feature name: bs * L_f} with their graphs (before alpha/beta)."""
        if self.s_taps is None and self.pairs:
            raise RuntimeError("Distiller.on_train_start() must run before the first step (the engine calls it)")
        targets = targets.to(imgs.device)
        t_raw = self._teacher_out if self._teacher_out is not None else self._run_teacher(imgs)
        self._teacher_out = None
        bs = imgs.shape[0]
        cfg = self.cfg
        terms = {}
        if cfg.kd:
            gates = self._gates(preds, t_raw, targets) if cfg.kd_gate == "teacher_better" else None
            terms["kd"], _ = output_kd_loss(list(preds), t_raw, self.hyp, self.nc, cfg.kd_loss_selected,
                                            cfg.temperature, gates)
        for name in cfg.feat:
            term = torch.zeros((), device=imgs.device)
            for t_i, s_i, stride, _, _ in self.pairs[name]:
                term = term + self._feature_term(FEATURE_LOSSES[name], t_i, s_i, stride, targets, bs, t_raw)
            terms[name] = bs * term
        if self.t_taps:
            self.t_taps.clear()
        if self.s_taps:
            self.s_taps.clear()
        return terms

    def _gates(self, preds, t_raw, targets):
        """--kd-gate teacher_better: per level, 1 where the teacher is closer to the GT than the student.
        Images without labels (--unlabeled) stay open: no GT there says nothing about who is right.
        Adds this step's kept share of the teacher-objectness weight to the epoch's gate statistics."""
        gates = []
        n_labeled = self.unlabeled.n_labeled if self.unlabeled is not None else None
        for s, t in zip(preds, t_raw):
            bs, _, ny, nx, _ = s.shape
            g = teacher_better_gate(s, t, gt_class_cells(targets, bs, ny, nx, self.nc))
            if n_labeled is not None and n_labeled < bs:
                g[n_labeled:] = 1.0
            w = torch.sigmoid(t[..., 4:5].detach().float())
            self._gate_sums = self._gate_sums.to(w.device) + torch.stack(((w * g).sum(), w.sum()))
            gates.append(g)
        return gates

    def _log_gates(self, epoch, save_dir):
        """The epoch's share of output KD (by teacher objectness) the gate kept, logged and in save_dir/kd_gate.csv."""
        kept, total = self._gate_sums.tolist()
        self._gate_sums = torch.zeros(2)
        if total <= 0:
            return
        share = kept / total
        self.gate_history.append((epoch, share))
        LOGGER.info(f"{colorstr('KD gate:')} epoch {epoch}: {share:.1%} of the output-KD weight kept "
                    f"(cells where the teacher beats the student)")
        if save_dir is not None:
            f = Path(save_dir) / "kd_gate.csv"
            new = not f.exists()
            with open(f, "a") as fh:
                fh.write("epoch,kept_share\n" if new else "")
                fh.write(f"{epoch},{share:.5f}\n")

    def _feature_term(self, spec, t_i, s_i, stride, targets, bs, t_raw):
        """One registered feature loss on one teacher/student layer pair (unweighted)."""
        f_t, f_s = self.t_taps[t_i].float(), self.s_taps.features.get(s_i)
        if f_s is None:  # the hooked layer did not run in the student's forward: no gradient, the health check says so
            if self.health is not None:
                self.health.note(spec.name, f"student layer {s_i}'s hook never ran (tapped a module outside the forward?)")
            return torch.zeros((), device=f_t.device)
        if spec.adapter:
            f_s = self.adapters.apply_to(s_i, f_s).float()
        ctx = FeatureContext(targets, bs, stride, self.teacher.model[-1], self.cfg.temperature, self.cfg.options,
                             t_raw)
        return spec.fn(f_s, f_t, ctx)

    # ------------------------------------------------------------------ lifecycle
    def teardown(self, engine=None):
        for taps in (self.t_taps, self.s_taps):
            if taps is not None:
                taps.close()
        self.t_taps = self.s_taps = self._teacher_out = None

    def state_dict(self):
        return {"adapters": self.adapters.state_dict() if self.adapters is not None else None,
                "feats": list(self.cfg.feat), "kd_type": self.cfg.kd_loss_selected}

    def load_state_dict(self, state):
        if not state:
            return
        adapters = state.get("adapters") if isinstance(state, dict) else None
        if not isinstance(state, dict) or not (adapters is None or (isinstance(adapters, dict) and all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in adapters.items()))):
            raise ValueError("the KD state must be {'adapters': {name: tensor} or None, ...}")
        if self.teacher is None:  # before setup: applied once the adapters exist
            self._pending_state = state
            return
        if state.get("adapters") and self.adapters is not None:
            self.adapters.load_state_dict(state["adapters"])
        self._pending_state = None
