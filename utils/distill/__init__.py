"""Knowledge distillation: scoped feature taps, layer pairing, adapters, pure losses, masks, the
feature-loss registry (features.py), the options (config.KDConfig) and the Distiller plug-in of the
training engine (import it from utils.distill.distiller)."""

from .adapters import Adapter, AdapterSet
from .config import KDConfig
from .features import FEATURE_LOSSES, FeatureContext, FeatureOption, feature_loss
from .losses import at, at_loss, cwd_loss, fgfi_loss, ft, ft_loss, output_kd_loss, wat_loss
from .masks import fgfi_mask, gt_cell_mask, wat_mask
from .pairing import pair_layers, parse_kd_layers, role_layers
from .taps import FeatureTaps, hook_count

__all__ = ["Adapter", "AdapterSet", "FEATURE_LOSSES", "FeatureContext", "FeatureOption", "FeatureTaps", "KDConfig",
           "at", "at_loss", "cwd_loss", "feature_loss", "fgfi_loss", "fgfi_mask", "ft", "ft_loss", "gt_cell_mask",
           "hook_count", "output_kd_loss", "pair_layers", "parse_kd_layers", "role_layers", "wat_loss", "wat_mask"]
