"""The knowledge-distillation options: one typed KDConfig, its CLI flags, and how it is built
from parsed flags or from the `opt` stored in a checkpoint (--resume)."""

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path

from utils.cli import OptionError, UserError
from utils.general import LOGGER
from utils.options import Rule, check_options, real
from utils.unlabeled import FROM_DATA

from .features import FEATURE_LOSSES, feature_options
from .losses import KD_CLS_TYPES, KD_GATES
from .pairing import parse_kd_layers

KD_RULES = (
    Rule("temperature", "--temperature", real(0, above=True), "a finite number > 0 (softmax temperature)"),
    Rule("alpha", "--alpha", real(0), "a finite number >= 0 (weight of the output distillation loss)"),
    Rule("unlabeled_ratio", "--unlabeled-ratio", real(0, 64, above=True),
         "in (0, 64] (unlabeled images per labeled image)"),
)
BETA_VALID = "a finite number >= 0 (weight of the feature loss)"
OPTION_RULES = {"bg_weight": (real(0, 1), "a number in [0, 1] (background weight; GT cells get 1 - it)")}
ANY_FINITE = (real(-float("inf")), "a finite number")  # a registered option without a declared range
# The feature loss(es) that train_kd.py adds to output KD unless --feat says otherwise (`--feat none`: output KD
# alone). PKD: at 100 epochs on NEU-DET (img 224, yolov5s teacher, yolov5n student, seeds 0 and 1) output KD
# alone gained +0.018 mAP50 over the student trained alone and output KD + PKD +0.031 (kd_convergence.py).
DEFAULT_FEAT = ("pkd",)


def parse_feats(feat):
    """--feat value(s) -> tuple of feature-loss names (validated); 'none' or empty -> ()."""
    if feat is None:
        return ()
    items = feat if isinstance(feat, (list, tuple)) else [feat]
    names = [n.strip().lower() for item in items for n in str(item).replace("+", ",").split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    bad = [n for n in names if n not in FEATURE_LOSSES]
    if bad:
        raise ValueError(f"--feat: unknown feature loss {bad}; choose from {tuple(FEATURE_LOSSES)} or none")
    return tuple(dict.fromkeys(names))


def parse_betas(beta, feats):
    """--beta value(s) -> {feature loss: weight}. A bare number sets every loss not named;
    'name=value' items (e.g. 'at=1 fgfi=0.001') set one loss each; the rest take their registered beta."""
    items = beta if isinstance(beta, (list, tuple)) else [beta]
    items = [t for item in items if item is not None for t in str(item).replace(",", " ").split()]
    default, named = None, {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if sep:
                key = key.strip().lower()
                if key not in FEATURE_LOSSES:
                    raise ValueError
                named[key] = float(value)
            else:
                default = float(item)
        except ValueError:
            raise ValueError(f"--beta: cannot read {item!r}; give a number or name=number with a name "
                             f"from {tuple(FEATURE_LOSSES)}") from None
    unused = sorted(set(named) - set(feats))
    if unused:
        LOGGER.warning(f"--beta: {unused} set but not selected with --feat {list(feats) or ['none']}")
    return {name: named.get(name, FEATURE_LOSSES[name].beta if default is None else default) for name in feats}


def default_betas():
    """{feature loss: its registered default beta}."""
    return {name: spec.beta for name, spec in FEATURE_LOSSES.items()}


def _default_options():
    return {o.name: o.default for o in feature_options()}


@dataclass
class KDConfig:
    """Every distillation option, typed and validated (SPEC.md section 4).

    Build it with KDConfig(...) in code, KDConfig.from_opt(parsed flags) or KDConfig.resumed(opt, saved).
    betas lists the weight of each selected feature loss (registered defaults for the ones not given);
    options holds the FeatureOption values of the registered losses (e.g. 'bg_weight').
    unlabeled (utils/unlabeled.py): images without labels distilled too, unlabeled_ratio per labeled image.
    """

    teacher_weight: str | None = None
    kd: bool = True  # output distillation on/off
    kd_loss_selected: str = "l2"  # class term of output KD: l2, kl or bce
    kd_gate: str = "none"  # output KD everywhere, or teacher_better: only where the teacher beats the student
    temperature: float = 1.0  # softmax temperature (kl, cwd)
    alpha: float = 1.0  # weight of output KD
    feat: tuple = DEFAULT_FEAT  # selected feature losses, names in FEATURE_LOSSES; () for output KD alone
    betas: dict = field(default_factory=dict)
    kd_layers: str | None = None  # explicit 'teacher:student' layer pairs, else automatic
    options: dict = field(default_factory=_default_options)
    unlabeled: str | None = None  # folder, .txt list or glob; FROM_DATA = the dataset YAML's 'unlabeled:' key
    unlabeled_ratio: float = 1.0  # unlabeled images per labeled image in a batch

    def __post_init__(self):
        if self.kd_loss_selected not in KD_CLS_TYPES:
            raise ValueError(f"--kd_loss_selected must be one of {KD_CLS_TYPES}, got {self.kd_loss_selected!r}")
        self.kd_gate = self.kd_gate or "none"
        if self.kd_gate not in KD_GATES:
            raise OptionError(f"--kd-gate must be one of {KD_GATES}, got {self.kd_gate!r}")
        self.feat = parse_feats(self.feat)
        unknown = sorted(set(self.betas) - set(self.feat))
        if unknown:
            raise ValueError(f"KDConfig: betas for {unknown}, which are not in feat {list(self.feat)}")
        self.betas = {name: float(self.betas.get(name, FEATURE_LOSSES[name].beta)) for name in self.feat}
        self.options = {**_default_options(), **{k: float(v) for k, v in self.options.items()}}
        self.temperature, self.alpha = float(self.temperature), float(self.alpha)
        self.kd_layers = self.kd_layers or None
        self.unlabeled = str(self.unlabeled) if self.unlabeled else None
        self.unlabeled_ratio = float(self.unlabeled_ratio)
        self.check()
        if self.unlabeled and not (self.kd or self.feat):
            raise OptionError("--unlabeled needs a KD loss: unlabeled images only get the KD losses "
                              "(drop --no-kd or select --feat)")

    def check(self):
        """Refuse values that cannot work (NaN, inf, --temperature 0, a negative weight) naming the flag."""
        check_options(vars(self), KD_RULES)
        bad = [f"{n}={b:g}" for n, b in self.betas.items() if not real(0)(b)]
        if bad:
            raise OptionError(f"--beta {' '.join(bad)}: must be {BETA_VALID}")
        check_options(self.options, [Rule(name, f"--{name.replace('_', '-')}", *OPTION_RULES.get(name, ANY_FINITE))
                                     for name in self.options])
        if self.kd_layers:
            parse_kd_layers(self.kd_layers)  # its syntax now; the layer indices once the models are built

    @classmethod
    def from_opt(cls, opt):
        """From parsed train_kd.py flags (a Namespace) or a checkpoint's `opt` dict; --beta is read here, once."""
        d = dict(vars(opt) if isinstance(opt, argparse.Namespace) else opt)
        plain = {f.name: d[f.name] for f in fields(cls) if f.name not in ("betas", "options") and f.name in d}
        feat = parse_feats(d.get("feat"))
        options = {}
        for o in feature_options():
            keys = [k for k in (o.name, *o.old_keys) if d.get(k) is not None]
            if keys:
                options[o.name] = d[keys[0]]
        return cls(**{**plain, "feat": feat}, betas=parse_betas(d.get("beta"), feat), options=options)

    @classmethod
    def resumed(cls, opt, saved):
        """The options of an interrupted run: those in its checkpoint `opt` (older key names read too),
        the rest from the current flags."""
        current = dict(vars(opt) if isinstance(opt, argparse.Namespace) else opt)
        for o in feature_options():  # a saved old key must win over the current flag's default
            if o.name not in saved and any(k in saved for k in o.old_keys):
                current.pop(o.name, None)
        return cls.from_opt({**current, **saved})

    def store(self, opt):
        """Write the canonical feat list and option values into a Namespace (saved in last.pt as `opt`)."""
        opt.feat = list(self.feat)
        for name, value in self.options.items():
            setattr(opt, name, value)
        return opt


def check_teacher(path):
    """A clear UserError when --teacher_weight is missing, absent or unreadable."""
    if not path:
        raise UserError("--teacher_weight is required (a teacher .pt checkpoint)")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"teacher checkpoint {path} does not exist")
    try:
        with open(p, "rb") as f:
            f.read(4)
    except OSError as e:
        raise UserError(f"teacher checkpoint {path} is unreadable: {e}") from None


def add_kd_args(parser):
    """Add the distillation flags to a parser (train.py's, in train_kd.py) and return it."""
    d = KDConfig()
    g = parser.add_argument_group("knowledge distillation")
    g.add_argument("--teacher_weight", "--teacher-weight", dest="teacher_weight", type=str, default=None,
                   help="teacher checkpoint (ours or upstream YOLOv5 .pt); required")
    g.add_argument("--kd", action=argparse.BooleanOptionalAction, default=d.kd, help="output distillation on/off")
    g.add_argument("--kd_loss_selected", "--kd-loss-selected", dest="kd_loss_selected", default=d.kd_loss_selected,
                   choices=KD_CLS_TYPES, help="class distillation loss")
    g.add_argument("--kd-gate", "--kd_gate", dest="kd_gate", default=d.kd_gate, choices=KD_GATES,
                   help="output KD on every cell (none) or only on cells where the teacher is closer to the "
                        "ground truth than the student (teacher_better)")
    g.add_argument("--temperature", type=float, default=d.temperature, help="softmax temperature (kl, cwd)")
    g.add_argument("--alpha", type=float, default=d.alpha, help="weight of the output distillation loss")
    defaults = ", ".join(f"{n} {b:g}" for n, b in default_betas().items())
    g.add_argument("--beta", nargs="+", default=[],
                   help=f"feature loss weights: a number for all, or name=value per loss (at=1 fgfi=0.001); "
                        f"default {defaults}")
    losses = ", ".join(f"{n} ({spec.help})" for n, spec in FEATURE_LOSSES.items())
    g.add_argument("--feat", nargs="+", default=list(d.feat),
                   help=f"feature losses: one or several of {losses}, or none (output KD alone); "
                        f"default {' '.join(d.feat) or 'none'}")
    for o in feature_options():
        g.add_argument(f"--{o.name.replace('_', '-')}", *o.flags, dest=o.name, type=float, default=o.default,
                       help=o.help)
    g.add_argument("--kd-layers", "--kd_layers", dest="kd_layers", type=str, default=None,
                   help="explicit teacher:student layer pairs '17:17,20:20' (default: automatic by stride/role)")
    g.add_argument("--unlabeled", nargs="?", const=FROM_DATA, default=None,
                   help="images without labels, distilled too (no detection loss): a folder, a .txt list or a "
                        "glob; --unlabeled alone: the dataset YAML's 'unlabeled:' key")
    g.add_argument("--unlabeled-ratio", "--unlabeled_ratio", dest="unlabeled_ratio", type=float,
                   default=d.unlabeled_ratio, help="unlabeled images per labeled image in a batch (--unlabeled)")
    return parser
