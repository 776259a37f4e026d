"""Teacher/student layer pairing by measured stride and role.

Roles: 'backbone' stage ends (the last backbone layer at each stride >= 4) and 'neck'
outputs (the layers feeding Detect, `model.model[-1].f`). Pairing by stride and role means a
teacher with extra SE/CA layers (shifted indices) pairs with a plain student automatically.
"""

import torch

from utils.torch_utils import de_parallel

from .taps import FeatureTaps, _layers

DRY_SIZE = 256


def _backbone_len(model):
    """Number of backbone layers: from layer_roles() when present, else from the YAML."""
    core = de_parallel(model)
    if hasattr(core, "layer_roles"):
        return sum(1 for r in core.layer_roles() if r.get("section") == "backbone")
    return len(core.yaml["backbone"])


@torch.no_grad()
def measure_layers(model, size=DRY_SIZE):
    """Dry forward of a zero image: {layer index: (stride, channels)} for 4-D outputs."""
    layers = _layers(model)
    core = de_parallel(model)
    p = next(core.parameters())
    was_training = core.training
    core.eval()
    try:
        with FeatureTaps(core, range(len(layers) - 1)) as taps:  # all but Detect
            core(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype))
            out = {i: (size / f.shape[-1], f.shape[1]) for i, f in taps.features.items()
                   if isinstance(f, torch.Tensor) and f.dim() == 4}
    finally:
        core.train(was_training)
    return out


def role_layers(model, info=None):
    """{'backbone': {stride: idx}, 'neck': {stride: idx}} for the model."""
    info = info if info is not None else measure_layers(model)
    nb = _backbone_len(model)
    backbone = {}
    for i in sorted(info):
        s = info[i][0]
        if i < nb and s >= 4:
            backbone[s] = i  # keeps the last layer at each stride
    neck = {info[i][0]: i for i in _layers(model)[-1].f}
    return {"backbone": backbone, "neck": neck}


def parse_kd_layers(spec):
    """'t:s,t:s' -> [(t, s), ...]; clear error on bad syntax."""
    pairs = []
    for item in str(spec).replace(" ", "").split(","):
        if not item:
            continue
        try:
            t, s = item.split(":")
            pairs.append((int(t), int(s)))
        except ValueError:
            raise ValueError(f"--kd-layers expects 'teacher:student' index pairs like '17:17,20:20', got {item!r}") from None
    if not pairs:
        raise ValueError(f"--kd-layers {spec!r} names no layer pair")
    return pairs


def pair_layers(teacher, student, roles=("backbone", "neck"), override=None):
    """List of (t_idx, s_idx, stride, c_t, c_s) pairs.

    roles: which roles to pair ('backbone', 'neck'). override: explicit [(t, s)] pairs or a
    't:s,...' string; checked for equal strides.
    """
    t_info, s_info = measure_layers(teacher), measure_layers(student)
    if override:
        pairs = parse_kd_layers(override) if isinstance(override, str) else list(override)
        for t, s in pairs:
            if t not in t_info or s not in s_info:
                raise ValueError(f"--kd-layers pair {t}:{s}: layer without a feature map output "
                                 f"(teacher layers {sorted(t_info)}, student layers {sorted(s_info)})")
            if t_info[t][0] != s_info[s][0]:
                raise ValueError(f"--kd-layers pair {t}:{s}: teacher stride {t_info[t][0]:g} != student stride {s_info[s][0]:g}")
    else:
        t_roles, s_roles = role_layers(teacher, t_info), role_layers(student, s_info)
        pairs = []
        for role in roles:
            for stride in sorted(set(t_roles[role]) & set(s_roles[role])):
                pairs.append((t_roles[role][stride], s_roles[role][stride]))
    return [(t, s, t_info[t][0], t_info[t][1], s_info[s][1]) for t, s in pairs]
