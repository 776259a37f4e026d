"""torch.hub entry point: torch.hub.load("path/to/yolov5-kd", "custom", path="best.pt", source="local").

Only local weights: a .pt (ours or upstream YOLOv5, loaded safely) or any artifact export.py writes
(.torchscript, .onnx, *_openvino_model, INT8 ones). Nothing is downloaded. See utils/deploy/hub.py.
"""

dependencies = ["torch", "numpy", "cv2", "yaml"]


def custom(path="best.pt", autoshape=True, _verbose=True, device=None):
    """A HubModel over `path`: call it on paths, PIL images or RGB arrays -> Detections."""
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from utils.deploy.hub import HubModel

    if not autoshape:
        from utils.backends import InferenceBackend

        return InferenceBackend(path, device=device or "cpu")
    return HubModel(path, device=device)
