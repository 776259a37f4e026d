"""Scoped forward hooks that record layer outputs (registered once, always removed)."""

from utils.torch_utils import de_parallel


def _layers(model):
    """The indexable layer list of a DetectionModel (also through DDP / DataParallel)."""
    m = de_parallel(model)
    if not hasattr(m, "model"):
        raise TypeError(f"{type(m).__name__} has no 'model' layer list to tap")
    return m.model


class FeatureTaps:
    """Record the outputs of `model.model[i]` for i in `layer_indices` on every forward.

    Use as a context manager or call close(); `features[i]` holds the latest output.
    """

    def __init__(self, model, layer_indices):
        layers = _layers(model)
        self.indices = [int(i) for i in layer_indices]
        self.features = {}
        self._handles = []
        for i in self.indices:
            if not -len(layers) <= i < len(layers):
                self.close()
                raise IndexError(f"cannot tap layer {i}: the model has {len(layers)} layers")
            self._handles.append(layers[i].register_forward_hook(self._make_hook(i)))

    def _make_hook(self, i):
        def hook(module, inputs, output):
            self.features[i] = output
        return hook

    def __getitem__(self, i):
        return self.features[i]

    def clear(self):
        """Drop stored outputs (and the autograd graphs they hold)."""
        self.features.clear()

    def close(self):
        """Remove every hook (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.features.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def hook_count(model):
    """Total forward (pre-)hooks on all submodules of a model: for leak tests."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
