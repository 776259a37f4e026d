"""Feature-distillation losses as the Distiller uses them: a registry and the built-in losses.

A feature loss is one function decorated with `@feature_loss(...)`. The decorator declares
everything the rest of the code needs (the --feat choice, the default --beta, whether the
student feature goes through a trainable adapter, which layer roles are paired, extra
options and their CLI flags); train_kd.py's flags, help texts and the Distiller derive from
FEATURE_LOSSES. The function gets one teacher/student layer pair per call:

    fn(f_s, f_t, ctx) -> scalar tensor (unweighted; the Distiller sums pairs, x batch size, x beta)

f_s: student feature (after the adapter when `adapter=True`, then float32 and with the
teacher's channel count); f_t: teacher feature (float32, no grad); ctx: FeatureContext.
"""

from dataclasses import dataclass
from typing import Callable

import torch

from . import losses
from .masks import fgfi_mask, wat_mask

ROLES = ("backbone", "neck")  # see pairing.role_layers
# fixture teacher, fresh yolov5n, NEU-DET img 224 batch 16, 4 batches: student-gradient norm at beta 1 is
# pkd 69, crosskd 200 against 13.6 for detection (kd_grad_balance.py --feat pkd crosskd); these betas bring each
# to 0.1x detection's
PKD_BETA = 0.02
CROSSKD_BETA = 0.007


@dataclass(frozen=True)
class FeatureOption:
    """An extra number a feature loss reads (KDConfig.options[name], CLI flag --name)."""

    name: str
    default: float
    help: str
    flags: tuple = ()  # further CLI spellings kept for compatibility
    old_keys: tuple = ()  # its key in the `opt` of older checkpoints


@dataclass(frozen=True)
class FeatureLoss:
    """One registered loss: see feature_loss()."""

    name: str
    fn: Callable
    beta: float
    adapter: bool
    roles: tuple
    options: tuple
    help: str
    check_pairs: Callable = None  # check_pairs(teacher, pairs) raises ValueError for pairs the loss cannot use


FEATURE_LOSSES = {}  # name -> FeatureLoss, in registration order (the order of the help texts)


def feature_loss(name, *, beta, help, adapter=False, roles=ROLES, options=(), check_pairs=None):
    """Register `fn(f_s, f_t, ctx)` as the feature loss `name` (the --feat value).

    beta: default weight (--beta); adapter: compare the student feature after a trainable 1x1
    conv + BN to the teacher's channels; roles: layer roles to pair (subset of ROLES);
    options: FeatureOption tuple of extra numbers the loss reads from ctx.option(name);
    check_pairs: called with (teacher, [(t, s, stride, c_t, c_s)]) before training, raises ValueError.
    """
    roles, options = tuple(roles), tuple(options)

    def register(fn):
        if name in FEATURE_LOSSES or name in ("none", "kd"):
            raise ValueError(f"feature loss {name!r} is already registered (or reserved)")
        if not roles or not set(roles) <= set(ROLES):
            raise ValueError(f"feature loss {name!r}: roles {roles} must be a non-empty subset of {ROLES}")
        FEATURE_LOSSES[name] = FeatureLoss(name, fn, float(beta), bool(adapter), roles, options, help, check_pairs)
        return fn

    return register


def feature_options():
    """Every FeatureOption of the registered losses, once per name."""
    out = {}
    for spec in FEATURE_LOSSES.values():
        for o in spec.options:
            if out.setdefault(o.name, o) != o:
                raise ValueError(f"feature option {o.name!r} is declared twice with different settings")
    return tuple(out.values())


def detect_level(detect, stride):
    """Index of `stride` among a Detect layer's levels; ValueError when it is not one of them."""
    strides = [int(round(x)) for x in detect.stride.tolist()]
    if int(round(stride)) not in strides:
        raise ValueError(f"stride {stride:g} is not one of the teacher's Detect levels {strides}")
    return strides.index(int(round(stride)))


@dataclass
class FeatureContext:
    """What a feature loss may read besides the two features of one layer pair."""

    targets: torch.Tensor  # (N, 6) [image, class, xc, yc, w, h], boxes normalised to the input
    batch_size: int
    stride: float  # input pixels per cell of this pair's feature maps
    teacher_detect: torch.nn.Module  # the teacher's Detect layer (anchors, strides)
    temperature: float  # --temperature
    options: dict  # FeatureOption values by name
    teacher_outputs: list = ()  # the teacher's raw Detect maps of this batch, one per level

    def option(self, name):
        return self.options[name]

    def level(self):
        """Index of this pair's stride among the teacher's Detect levels."""
        return detect_level(self.teacher_detect, self.stride)

    def anchors_px(self):
        """The teacher's anchors (na, 2) in pixels at this pair's stride."""
        det, level = self.teacher_detect, self.level()
        return det.anchors[level].float() * det.stride[level].float()


# ------------------------------------------------------------------------------ built-in losses
@feature_loss("at", beta=1.0, help="attention transfer")
def attention_transfer(f_s, f_t, ctx):
    return losses.at_loss(f_s, f_t)


BG_WEIGHT = FeatureOption("bg_weight", 0.25, "background weight of the masked AT (wat); GT cells get 1 - it",
                          flags=("--ratio",), old_keys=("ratio",))


@feature_loss("wat", beta=1.0, options=(BG_WEIGHT,), help="attention transfer masked by the GT boxes")
def masked_attention_transfer(f_s, f_t, ctx):
    h, w = f_t.shape[-2:]
    return losses.wat_loss(f_s, f_t, wat_mask(ctx.targets, ctx.batch_size, h, w, ctx.option("bg_weight")))


# Default betas: on NEU-DET (fixture teacher, fresh yolov5n, img 224, batch 16) the student-gradient norm of
# each term at beta 1 is: at 9.3, wat 4.2, ft 0.7, fgfi 950, cwd 930, against 12-16 for the detection loss
# (benchmarks/kd_grad_balance.py). FGFI and CWD compare raw feature values, so at beta 1 they swamp detection
# (and the gradient clip of 10); 1e-3 puts them near 1/10 of it. FGFI since divides by 2 * N_p (mask points,
# as the paper) instead of 2 * N_p * C: its loss grows by C per level (128/256/512 for the fixture teacher)
# and its student gradient by 220x-290x (fixture teacher, fresh yolov5n, NEU-DET: img 128 batch 8, 479 ->
# 105,000 at beta 1, detection 15.5; img 160 batch 4, 355 -> 103,000, detection 7.8), so its default beta
# goes from 1e-3 to 1e-3 / 250 = 4e-6, the same balance against detection.
@feature_loss("ft", beta=1.0, adapter=True, roles=("neck",), help="channel descriptors after an adapter")
def channel_descriptor(f_s, f_t, ctx):
    return losses.ft_loss(f_s, f_t)


@feature_loss("fgfi", beta=4e-6, adapter=True, roles=("neck",), help="fine-grained feature imitation")
def fine_grained_imitation(f_s, f_t, ctx):
    h, w = f_t.shape[-2:]
    return losses.fgfi_loss(f_s, f_t, fgfi_mask(ctx.targets, ctx.batch_size, h, w, ctx.stride, ctx.anchors_px()))


@feature_loss("cwd", beta=1e-3, adapter=True, roles=("neck",), help="channel-wise distillation")
def channel_wise(f_s, f_t, ctx):
    return losses.cwd_loss(f_s, f_t, ctx.temperature)


# PKD and CrossKD: default betas (PKD_BETA, CROSSKD_BETA) put their student gradient at 1/10 of detection's.
@feature_loss("pkd", beta=PKD_BETA, adapter=True, roles=("neck",),
              help="PKD: standardised neck features (Pearson correlation, Cao et al. 2022)")
def pearson_imitation(f_s, f_t, ctx):
    return losses.pkd_loss(f_s, f_t)


def _feeds_teacher_detect(teacher, pairs):
    """CrossKD runs teacher features through the teacher's head: each pair's teacher layer must be the Detect
    input of its stride (--kd-layers can name others)."""
    det = teacher.model[-1]
    for t, s, stride, _, _ in pairs:
        if det.f[detect_level(det, stride)] != t:
            raise ValueError(f"--feat crosskd: teacher layer {t} (pair {t}:{s}, stride {stride:g}) does not feed the "
                             f"teacher's Detect; its inputs are layers {det.f} (strides "
                             f"{[int(round(x)) for x in det.stride.tolist()]})")


@feature_loss("crosskd", beta=CROSSKD_BETA, adapter=True, roles=("neck",), check_pairs=_feeds_teacher_detect,
              help="CrossKD: student neck features through the frozen teacher head (Wang et al. 2024)")
def cross_head(f_s, f_t, ctx):
    det, level = ctx.teacher_detect, ctx.level()  # f_t feeds that level (checked): its output is the teacher's
    return losses.crosskd_loss(losses.head_maps(det.m[level], f_s, det.na), ctx.teacher_outputs[level])
