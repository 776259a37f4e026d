"""Distiller: the knowledge-distillation plug-in of the training engine (SPEC.md section 4)."""

import torch

from utils.engine import Plugin
from utils.general import LOGGER, colorstr
from utils.torch_utils import de_parallel

from . import losses as L
from .adapters import AdapterSet
from .masks import fgfi_mask, wat_mask
from .pairing import pair_layers
from .taps import FeatureTaps

FEATURES = ("at", "wat", "ft", "fgfi", "cwd")
ADAPTED = ("ft", "fgfi", "cwd")  # features compared after a student->teacher adapter
NECK_ONLY = ("ft", "fgfi", "cwd")  # default: the neck layers feeding Detect
KD_HYP_DEFAULTS = {"giou": 0.05, "kd": 1.0}
# Default --beta per feature loss. On NEU-DET (fixture teacher, fresh yolov5n, img 224, batch 16) the
# student-gradient norm of each term at beta 1 is: at 9.3, wat 4.2, ft 0.7, fgfi 950, cwd 930, against
# 12-16 for the detection loss (benchmarks/kd_grad_balance.py). FGFI and CWD compare raw feature values,
# so at beta 1 they swamp detection (and the gradient clip of 10); 1e-3 puts them near 1/10 of it.
DEFAULT_BETAS = {"at": 1.0, "wat": 1.0, "ft": 1.0, "fgfi": 1e-3, "cwd": 1e-3}


def parse_feats(feat):
    """--feat value(s) -> tuple of feature-loss names (validated); 'none' or empty -> ()."""
    if feat is None:
        return ()
    items = feat if isinstance(feat, (list, tuple)) else [feat]
    names = [n.strip().lower() for item in items for n in str(item).replace("+", ",").split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    bad = [n for n in names if n not in FEATURES]
    if bad:
        raise ValueError(f"--feat: unknown feature loss {bad}; choose from {FEATURES} or none")
    return tuple(dict.fromkeys(names))


def parse_betas(beta, feats):
    """--beta value(s) -> {feature loss: weight}. A bare number sets every loss not named;
    'name=value' items (e.g. 'at=1 fgfi=0.001') set one loss each; the rest take DEFAULT_BETAS."""
    items = beta if isinstance(beta, (list, tuple)) else [beta]
    items = [t for item in items if item is not None for t in str(item).replace(",", " ").split()]
    default, named = None, {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if sep:
                key = key.strip().lower()
                if key not in FEATURES:
                    raise ValueError
                named[key] = float(value)
            else:
                default = float(item)
        except ValueError:
            raise ValueError(f"--beta: cannot read {item!r}; give a number or name=number with a name "
                             f"from {FEATURES}") from None
    unused = sorted(set(named) - set(feats))
    if unused:
        LOGGER.warning(f"--beta: {unused} set but not selected with --feat {list(feats) or ['none']}")
    return {name: named.get(name, DEFAULT_BETAS[name] if default is None else default) for name in feats}


def _teacher_raw(out):
    """Raw Detect maps from an eval-mode forward ((decoded, raw)) or a train-mode list."""
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], (list, tuple)):
        return list(out[1])
    return list(out)


class Distiller(Plugin):
    """Adds alpha * L_kd + beta * L_feat to the detection loss.

    Logged terms (results.csv 'train/<name>', per image like box/obj/cls): 'kd' (output KD)
    and one column per selected feature loss, each as it enters the total loss.
    """

    def __init__(self, opt):
        self.opt = opt
        self.kd_on = bool(getattr(opt, "kd", True))
        self.kd_type = getattr(opt, "kd_loss_selected", "l2")
        if self.kd_type not in L.KD_CLS_TYPES:
            raise ValueError(f"--kd_loss_selected must be one of {L.KD_CLS_TYPES}, got {self.kd_type!r}")
        self.temperature = float(getattr(opt, "temperature", 1.0))
        self.alpha = float(getattr(opt, "alpha", 1.0))
        self.ratio = float(getattr(opt, "ratio", 0.25))
        self.feats = parse_feats(getattr(opt, "feat", None))
        self.betas = parse_betas(getattr(opt, "beta", 1.0), self.feats)
        self.kd_layers = getattr(opt, "kd_layers", None) or None
        self.loss_names = (("kd",) if self.kd_on else ()) + self.feats
        self.teacher = self.adapters = None
        self.t_taps = self.s_taps = None
        self.pairs = {}  # feature name -> [(t, s, stride, c_t, c_s)]
        self._pending_state = None

    # ------------------------------------------------------------------ setup
    def setup(self, engine):
        from utils.checkpoint import load_model

        opt = self.opt
        self.engine = engine
        student = de_parallel(engine.model)
        self.student = student
        device = next(student.parameters()).device
        self.teacher_file = str(opt.teacher_weight)
        self.student_file = str(getattr(opt, "weights", "") or getattr(opt, "cfg", "") or "student")
        teacher = load_model(self.teacher_file, device=device)
        teacher.eval().requires_grad_(False)
        self.teacher = teacher
        self._adopt_teacher_anchors()
        self.check_compatible()
        self._read_hyp()
        self.nc = int(student.nc)
        self._build_pairs()
        specs = {(s, c_s, c_t) for name in ADAPTED if name in self.feats for _, s, _, c_t, c_s in self.pairs[name]}
        self.adapters = AdapterSet(sorted(specs)).to(device) if specs else None
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)
        t_idx = sorted({t for p in self.pairs.values() for t, *_ in p})
        self.t_taps = FeatureTaps(teacher, t_idx) if t_idx else None
        amp = bool(getattr(engine, "amp", False)) and device.type == "cuda"
        if amp:
            teacher.half()  # same precision as the autocast student forward; BN stays frozen (eval)
        LOGGER.info(f"{colorstr('distill:')} teacher {self.teacher_file} -> student {self.student_file}; "
                    f"kd={'off' if not self.kd_on else self.kd_type} alpha={self.alpha} beta={self.betas or '-'} "
                    f"feat={','.join(self.feats) or 'none'} pairs={ {k: [(t, s) for t, s, *_ in v] for k, v in self.pairs.items()} }")

    def _build_pairs(self):
        for name in self.feats:
            roles = ("neck",) if name in NECK_ONLY else ("backbone", "neck")
            pairs = pair_layers(self.teacher, self.student, roles=roles, override=self.kd_layers)
            if not pairs:
                raise ValueError(f"--feat {name}: no teacher/student layers share a stride; use --kd-layers t:s")
            self.pairs[name] = pairs

    def _adopt_teacher_anchors(self):
        """Give the student the teacher's anchors (e.g. after the teacher's AutoAnchor) when the
        levels and strides agree: output KD compares the two heads anchor by anchor."""
        td, sd = self.teacher.model[-1], self.student.model[-1]
        same_levels = td.anchors.shape == sd.anchors.shape and \
            self.teacher.stride.flatten().tolist() == self.student.stride.flatten().tolist()
        if same_levels and not torch.equal(td.anchors.float().cpu(), sd.anchors.float().cpu()):
            with torch.no_grad():
                sd.anchors.copy_(td.anchors.to(sd.anchors.device, sd.anchors.dtype))
            LOGGER.info(f"{colorstr('distill:')} student {self.student_file} takes the anchors of teacher "
                        f"{self.teacher_file}: {(td.anchors * td.stride.view(-1, 1, 1)).round().tolist()} px")

    def check_compatible(self):
        """Fail with a message naming both files when nc, names, strides or anchors differ."""
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
            problems.append(f"anchors (pixels) {(td.anchors * td.stride.view(-1, 1, 1)).tolist()} vs "
                            f"{(sd.anchors * sd.stride.view(-1, 1, 1)).tolist()} (autoanchor? use --noautoanchor)")
        if problems:
            raise ValueError(f"teacher {self.teacher_file} and student {self.student_file} are incompatible "
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

    def trainable_modules(self):
        return [self.adapters] if self.adapters is not None else []

    # ------------------------------------------------------------------ step
    def step_loss(self, imgs, targets, preds):
        """alpha * L_kd + sum of beta_f * L_f, and the logged per-image items."""
        bs = imgs.shape[0]
        total = torch.zeros((), device=imgs.device)
        items = {}
        for name, value in self.loss_terms(imgs, targets, preds).items():
            weighted = (self.alpha if name == "kd" else self.betas[name]) * value
            total = total + weighted
            items[name] = (weighted / bs).detach()
        return total, items

    def loss_terms(self, imgs, targets, preds):
        """The unweighted terms of this step, batch-scaled like the detection loss (bs * mean):
        {'kd': L_kd (when on), feature name: bs * L_f} with their graphs (before alpha/beta)."""
        if self.s_taps is None and self.pairs:
            raise RuntimeError("Distiller.on_train_start() must run before the first step (the engine calls it)")
        targets = targets.to(imgs.device)
        imgs_t = imgs.half() if next(self.teacher.parameters()).dtype == torch.float16 else imgs
        with torch.no_grad():
            t_raw = _teacher_raw(self.teacher(imgs_t))
        bs = imgs.shape[0]
        terms = {}
        if self.kd_on:
            terms["kd"], _ = L.output_kd_loss(list(preds), t_raw, self.hyp, self.nc, self.kd_type, self.temperature)
        for name in self.feats:
            term = torch.zeros((), device=imgs.device)
            for t_i, s_i, stride, _, _ in self.pairs[name]:
                term = term + self._feature_term(name, t_i, s_i, stride, targets, bs)
            terms[name] = bs * term
        if self.t_taps:
            self.t_taps.clear()
        if self.s_taps:
            self.s_taps.clear()
        return terms

    def _feature_term(self, name, t_i, s_i, stride, targets, bs):
        f_t, f_s = self.t_taps[t_i].float(), self.s_taps[s_i]
        h, w = f_t.shape[-2:]
        if name == "at":
            return L.at_loss(f_s, f_t)
        if name == "wat":
            return L.wat_loss(f_s, f_t, wat_mask(targets, bs, h, w, self.ratio))
        f_a = self.adapters.apply_to(s_i, f_s).float()
        if name == "ft":
            return L.ft_loss(f_a, f_t)
        if name == "cwd":
            return L.cwd_loss(f_a, f_t, self.temperature)
        det = self.teacher.model[-1]
        level = [int(round(x)) for x in det.stride.tolist()].index(int(round(stride)))
        anchors_px = det.anchors[level].float() * det.stride[level].float()
        return L.fgfi_loss(f_a, f_t, fgfi_mask(targets, bs, h, w, stride, anchors_px))

    # ------------------------------------------------------------------ lifecycle
    def teardown(self, engine=None):
        for taps in (self.t_taps, self.s_taps):
            if taps is not None:
                taps.close()
        self.t_taps = self.s_taps = None

    def state_dict(self):
        return {"adapters": self.adapters.state_dict() if self.adapters is not None else None,
                "feats": list(self.feats), "kd_type": self.kd_type}

    def load_state_dict(self, state):
        if not state:
            return
        if self.teacher is None:  # before setup: applied once the adapters exist
            self._pending_state = state
            return
        if state.get("adapters") and self.adapters is not None:
            self.adapters.load_state_dict(state["adapters"])
        self._pending_state = None
