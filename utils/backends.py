"""One inference callable over a PyTorch checkpoint (ours / upstream YOLOv5) or an exported artifact (ONNX via
onnxruntime, TorchScript, OpenVINO; INT8 ones included), and an Ensemble of several (val.py, detect.py)."""

from pathlib import Path

import numpy as np
import torch

from utils.general import LOGGER


def _import_onnxruntime(weights):
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"{weights}: running an .onnx model needs onnxruntime (optional dependency): "
                          f"pip install onnxruntime (or onnxruntime-gpu)") from e
    return onnxruntime


def parse_onnx_metadata(meta, weights="model.onnx"):
    """(stride, names) from the custom metadata written by export.py (names parsed as a literal, never eval'd;
    both validated). A file without them (exported elsewhere) gets stride 32 and no names."""
    from utils.deploy.metadata import check_stride, read_metadata

    meta = {"stride": 32, **meta}
    if "names" not in meta:
        return check_stride(meta["stride"], weights), {}
    return read_metadata(meta, weights)


def artifact_kind(weights):
    """'pt', 'onnx', 'torchscript' or 'openvino' (a *_openvino_model folder or its .xml) of a weights path."""
    p = Path(weights)
    suffix = p.suffix.lower()
    if suffix in (".pt", ".pth"):
        return "pt"
    if suffix in (".onnx", ".torchscript"):
        return suffix[1:]
    if suffix == ".xml" or (p.is_dir() and p.name.endswith("_openvino_model")):
        return "openvino"
    raise ValueError(f"{weights}: unsupported weights format '{suffix or p.name}' (use .pt, .pth, .onnx, "
                     ".torchscript or a *_openvino_model folder)")


class InferenceBackend:
    """Load ``weights`` (.pt/.pth ours or upstream, or an artifact of artifact_kind) and run it:
    ``backend(im) -> (bs, N, nc+5)``.

    ``im`` is a float BCHW tensor scaled 0..1. Attributes: stride (int, the max stride), names (dict),
    pt / onnx (bool), fp16, device, model (the nn.Module for .pt), session (for .onnx).
    """

    def __init__(self, weights, device="cpu", fp16=False, fuse=True, cfg=None):
        """cfg: your own model YAML to build a .pt's architecture from (instead of the YAML stored in it)."""
        self.weights = Path(weights)
        self.device = torch.device(device) if not isinstance(device, torch.device) else device
        self.kind = artifact_kind(self.weights)
        self.pt, self.onnx = self.kind == "pt", self.kind == "onnx"
        self.model = self.session = None
        self.fixed_shape = None
        self.fp16, self.channels_last = False, False
        if self.pt:
            from utils.checkpoint import load_model

            self.fp16 = bool(fp16) and self.device.type == "cuda"  # fp16 only where it is fast
            model = load_model(self.weights, device=self.device, fuse=fuse, cfg=cfg or None)
            self.model = model.half() if self.fp16 else model
            self.channels_last = self.device.type == "cpu"  # ~1.4x faster convolutions on CPUs (oneDNN)
            if self.channels_last:
                self.model.to(memory_format=torch.channels_last)
            self.stride = int(torch.as_tensor(model.stride).max())
            self.names = dict(model.names)
        elif self.onnx:
            self._load_onnx(fp16)
        elif self.kind == "torchscript":
            from utils.deploy.torchscript import load_torchscript

            self.model, self.stride, self.names = load_torchscript(self.weights, self.device)  # any input shape
        else:
            from utils.deploy.openvino_io import load_openvino

            self.session, self.stride, self.names, self.fixed_shape = load_openvino(self.weights)

    def _load_onnx(self, fp16):
        if not self.weights.is_file():
            raise FileNotFoundError(f"{self.weights}: ONNX model not found")
        ort = _import_onnxruntime(self.weights)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.weights), providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.weights}: onnxruntime cannot load this model ({e})") from e
        inp = self.session.get_inputs()[0]
        self.input_name, self.output_names = inp.name, [o.name for o in self.session.get_outputs()]
        self.fp16 = inp.type == "tensor(float16)"
        if fp16 and not self.fp16:
            LOGGER.info(f"{self.weights}: float32 ONNX model, running in float32")
        if all(isinstance(d, int) for d in inp.shape):
            self.fixed_shape = tuple(inp.shape)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.stride, self.names = parse_onnx_metadata(meta, self.weights)

    def __call__(self, im, augment=False):
        """Decoded predictions (bs, N, nc + 5) as float32 on ``self.device``; augment: test-time augmentation
        (PyTorch models only; an ONNX model runs as exported)."""
        if self.kind == "torchscript":
            with torch.no_grad():
                return self.model(im.to(self.device, torch.float32)).float()
        if self.pt:
            im = im.to(self.device, torch.float16 if self.fp16 else torch.float32)
            if self.channels_last:
                im = im.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                y = self.model(im, augment=True) if augment else self.model(im)
            y = y[0] if isinstance(y, (list, tuple)) else y
            return y.float()
        if self.fixed_shape is not None and tuple(im.shape) != self.fixed_shape:
            raise ValueError(f"{self.weights}: static ONNX model expects input {self.fixed_shape}, got "
                             f"{tuple(im.shape)} (export with --dynamic, or use --img {self.fixed_shape[-1]} "
                             f"--batch-size {self.fixed_shape[0]} and no rectangular batches)")
        x = im.detach().cpu().numpy().astype(np.float16 if self.fp16 else np.float32)
        if self.kind == "openvino":
            y = self.session(x)[0]
        else:
            y = self.session.run(self.output_names[:1], {self.input_name: x})[0]
        return torch.from_numpy(np.asarray(y, dtype=np.float32)).to(self.device)

    def warmup(self, imgsz=(1, 3, 640, 640)):
        """One forward pass on zeros, so the first timed call is not a cold start."""
        if isinstance(imgsz, int):
            imgsz = (1, 3, imgsz, imgsz)
        if self.fixed_shape is not None:
            imgsz = self.fixed_shape
        with torch.no_grad():
            self(torch.zeros(*imgsz, device=self.device))


class Ensemble:
    """Several InferenceBackends run on the same input; decoded outputs concatenated (NMS ensemble)."""

    def __init__(self, weights, device, half, cfg=None):
        self.members = [InferenceBackend(w, device=device, fp16=half, cfg=cfg) for w in weights]
        first = self.members[0]
        self.stride = max(m.stride for m in self.members)
        self.names, self.pt, self.fp16 = first.names, all(m.pt for m in self.members), first.fp16
        for m in self.members[1:]:
            if len(m.names) != len(first.names):
                raise ValueError(f"ensemble: {m.weights} has {len(m.names)} classes, {first.weights} has "
                                 f"{len(first.names)}")

    def __call__(self, im, augment=False):
        outs = [m(im, augment=augment) for m in self.members]
        return torch.cat(outs, 1) if len(outs) > 1 else outs[0]

    def warmup(self, imgsz):
        for m in self.members:
            m.warmup(imgsz)
