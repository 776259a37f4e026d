"""Pure distillation loss functions (SPEC.md section 4). No modules, no state.

Every function takes tensors (any float dtype; computed in float32) and returns a
scalar tensor that is exactly 0 when student and teacher inputs are identical.
"""

import torch
import torch.nn.functional as F

KD_CLS_TYPES = ("l2", "kl", "bce")
KD_GATES = ("none", "teacher_better")


# ----------------------------------------------------------------------------------------
# Output distillation
# ----------------------------------------------------------------------------------------
def _cls_term(s_cls, t_cls, weight, kind, temperature):
    """Objectness-weighted class distillation term for one level (mean over elements)."""
    if kind == "l2":
        return (weight * (s_cls - t_cls) ** 2).mean()
    if kind == "kl":
        tau = float(temperature)
        log_p_s = F.log_softmax(s_cls / tau, dim=-1)
        log_p_t = F.log_softmax(t_cls / tau, dim=-1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1, keepdim=True)  # per cell
        return (weight * kl).mean() * tau * tau
    if kind == "bce":
        # BCE(s, sigmoid(t)) minus the teacher's own entropy: the Bernoulli KL, which has the
        # same gradient as plain BCE but is 0 when the student equals the teacher.
        p_t = torch.sigmoid(t_cls)
        bce = F.binary_cross_entropy_with_logits(s_cls, p_t, reduction="none")
        entropy = F.binary_cross_entropy_with_logits(t_cls, p_t, reduction="none")
        return (weight * (bce - entropy)).mean()
    raise ValueError(f"kd_loss_selected must be one of {KD_CLS_TYPES}, got {kind!r}")


def teacher_better_gate(s, t, labels):
    """Where the teacher is closer to the ground truth than the student: (bs, na, ny, nx, 1) of 0/1.

    s, t: one level's raw maps (bs, na, ny, nx, 5 + nc); labels: bool (bs, ny, nx, nc), the classes of
    the GT boxes covering each cell (masks.gt_class_cells). A model's error at a cell is
    |sigmoid(obj) - covered| plus, on covered cells, 1 - its highest probability among the covering
    classes. The gate is 1 where the teacher's error is at most the student's (+1e-4: ties, and a fused
    teacher's rounding, open it), so output KD switches off cell by cell wherever the student has overtaken
    its teacher.
    """
    s, t = s.detach().float(), t.detach().float()
    lab = labels.float().unsqueeze(1)  # (bs, 1, ny, nx, nc), over the anchors
    covered = lab.amax(-1, keepdim=True)

    def error(x):
        err = (torch.sigmoid(x[..., 4:5]) - covered).abs()
        if x.shape[-1] > 6:
            err = err + covered * (1 - (torch.sigmoid(x[..., 5:]) * lab).amax(-1, keepdim=True))
        return err

    return (error(t) <= error(s) + 1e-4).float()


def output_kd_loss(s_preds, t_preds, gains, nc, kind="l2", temperature=1.0, gates=None):
    """Objectness-weighted output distillation over all Detect levels.

    s_preds, t_preds: lists of raw maps (bs, na, ny, nx, 5 + nc) (logits).
    gains: dict with 'giou' (box weight), 'kd' (overall), 'obj', 'cls' (the detection
    loss's scaled gains). gates: None, or per level a (bs, na, ny, nx, 1) factor on the
    per-cell weight (teacher_better_gate). Returns (L_kd = bs*kd*(giou*box + obj*obj + cls*cls),
    tensor([box, obj, cls]) detached, unweighted sums over levels).
    """
    if len(s_preds) != len(t_preds):
        raise ValueError(f"student has {len(s_preds)} output levels, teacher {len(t_preds)}")
    dev = s_preds[0].device
    lbox, lobj, lcls = (torch.zeros((), device=dev) for _ in range(3))
    for i, (s, t) in enumerate(zip(s_preds, t_preds)):
        if s.shape != t.shape:
            raise ValueError(f"student output {tuple(s.shape)} != teacher output {tuple(t.shape)}")
        s, t = s.float(), t.detach().float()
        w = torch.sigmoid(t[..., 4:5])  # teacher objectness as per-cell weight
        if gates is not None:
            w = w * gates[i]
        lbox = lbox + (w * (s[..., :4] - t[..., :4]) ** 2).mean()
        lobj = lobj + (w * (s[..., 4:5] - t[..., 4:5]) ** 2).mean()
        if nc > 1:
            lcls = lcls + _cls_term(s[..., 5:], t[..., 5:], w, kind, temperature)
    bs = s_preds[0].shape[0]
    total = bs * gains["kd"] * (gains["giou"] * lbox + gains["obj"] * lobj + gains["cls"] * lcls)
    return total, torch.stack((lbox, lobj, lcls)).detach()


# ----------------------------------------------------------------------------------------
# Attention transfer and channel descriptors
# ----------------------------------------------------------------------------------------
def at(x, eps=1e-12):
    """Spatial attention map: L2-normalised flattened channel-mean of x^2, per image -> (bs, H*W)."""
    return F.normalize(x.float().pow(2).mean(1).flatten(1), dim=1, eps=eps)


def _check_spatial(f_s, f_t):
    if f_s.shape[0] != f_t.shape[0] or f_s.shape[-2:] != f_t.shape[-2:]:
        raise ValueError(f"feature shapes do not pair: student {tuple(f_s.shape)}, teacher {tuple(f_t.shape)}")


def at_loss(f_s, f_t):
    """L_at = mean((at(F_s) - at(F_t))^2). Channel counts may differ."""
    _check_spatial(f_s, f_t)
    return (at(f_s) - at(f_t.detach())).pow(2).mean()


def wat_loss(f_s, f_t, mask):
    """Masked attention transfer: mean(((at(F_t) - at(F_s)) * M)^2), mask (bs, H, W)."""
    _check_spatial(f_s, f_t)
    m = mask.float().flatten(1)
    return ((at(f_t.detach()) - at(f_s)) * m).pow(2).mean()


def ft(x, eps=1e-12):
    """Channel descriptor: L2-normalised spatial mean of x^2, per channel -> (bs, C)."""
    return F.normalize(x.float().pow(2).mean((2, 3)), dim=1, eps=eps)


def ft_loss(f_s_adapted, f_t):
    """L_ft = mean((ft(F_t) - ft(A(F_s)))^2); the student feature is already adapted."""
    if f_s_adapted.shape[:2] != f_t.shape[:2]:
        raise ValueError(f"adapted student {tuple(f_s_adapted.shape)} vs teacher {tuple(f_t.shape)}: channels differ")
    return (ft(f_t.detach()) - ft(f_s_adapted)).pow(2).mean()


# ----------------------------------------------------------------------------------------
# Fine-grained feature imitation and channel-wise distillation
# ----------------------------------------------------------------------------------------
def fgfi_loss(f_s_adapted, f_t, mask):
    """L_fgfi = sum(I * (A(F_s) - F_t)^2) / (2 * N_p), N_p = positive mask points (cells, not x channels),
    as in Wang et al. 2019: the squared error is summed over channels.

    mask: (bs, H, W) imitation mask. Returns 0 (not NaN) when the mask is empty, without a
    host synchronisation (the denominator is clamped to >= 1).
    """
    if f_s_adapted.shape != f_t.shape:
        raise ValueError(f"adapted student {tuple(f_s_adapted.shape)} != teacher {tuple(f_t.shape)}")
    m = mask.float().unsqueeze(1)  # (bs, 1, H, W)
    sq = (f_s_adapted.float() - f_t.detach().float()).pow(2) * m
    return sq.sum() / (2.0 * m.sum().clamp(min=1.0))


def cwd_loss(f_s_adapted, f_t, tau=1.0):
    """Channel-wise distillation: tau^2 / C * sum_c KL(p_t,c || p_s,c), softmax over space;
    averaged over the batch."""
    if f_s_adapted.shape != f_t.shape:
        raise ValueError(f"adapted student {tuple(f_s_adapted.shape)} != teacher {tuple(f_t.shape)}")
    bs, c = f_t.shape[:2]
    log_p_t = F.log_softmax(f_t.detach().float().flatten(2) / tau, dim=2)
    log_p_s = F.log_softmax(f_s_adapted.float().flatten(2) / tau, dim=2)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    return kl * (tau * tau) / (c * bs)


# ----------------------------------------------------------------------------------------
# PKD (Cao et al. 2022) and CrossKD (Wang et al. 2024)
# ----------------------------------------------------------------------------------------
def channel_standardise(x, eps=1e-6):
    """Each channel of x (bs, C, H, W) to zero mean and unit variance over the batch and its positions."""
    x = x.float()
    mean = x.mean((0, 2, 3), keepdim=True)
    std = x.std((0, 2, 3), keepdim=True) if x[:, 0].numel() > 1 else torch.ones_like(mean)
    return (x - mean) / (std + eps)


def pkd_loss(f_s_adapted, f_t):
    """PKD: mean((N(A(F_s)) - N(F_t))^2) / 2 with N = channel_standardise; equals 1 - Pearson r per
    channel (averaged), so it asks the student for the teacher's relations, not its magnitudes."""
    if f_s_adapted.shape != f_t.shape:
        raise ValueError(f"adapted student {tuple(f_s_adapted.shape)} != teacher {tuple(f_t.shape)}")
    return (channel_standardise(f_s_adapted) - channel_standardise(f_t.detach())).pow(2).mean() / 2


def head_maps(conv, x, na):
    """One Detect level's 1x1 conv on x -> raw maps (bs, na, ny, nx, no), in x's dtype (a half teacher
    conv applied to a float student feature, or the reverse)."""
    y = F.conv2d(x, conv.weight.to(x.dtype), None if conv.bias is None else conv.bias.to(x.dtype))
    bs, _, ny, nx = y.shape
    return y.view(bs, na, -1, ny, nx).permute(0, 1, 3, 4, 2)


def crosskd_loss(p_cross, p_t):
    """CrossKD on one level: the student's feature through the teacher's head (p_cross) against the
    teacher's own prediction p_t, both raw maps (bs, na, ny, nx, 5 + nc): the output-KD terms with the
    teacher's objectness as weight, box and objectness by squared error, classes by the Bernoulli KL."""
    if p_cross.shape != p_t.shape:
        raise ValueError(f"cross-head prediction {tuple(p_cross.shape)} != teacher prediction {tuple(p_t.shape)}")
    p_cross, p_t = p_cross.float(), p_t.detach().float()
    w = torch.sigmoid(p_t[..., 4:5])
    loss = (w * (p_cross[..., :5] - p_t[..., :5]) ** 2).mean()
    if p_t.shape[-1] > 6:
        loss = loss + _cls_term(p_cross[..., 5:], p_t[..., 5:], w, "bce", 1.0)
    return loss
