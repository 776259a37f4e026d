"""The torch.hub habit of YOLOv5 users: a model that takes images as they come and returns Detections.

    model = torch.hub.load("path/to/yolov5-kd", "custom", path="best.pt", source="local")  # or any artifact
    results = model(["a.jpg", pil_image, rgb_array], size=224)
    results.print(); results.save(); results.xyxy[0]; results.pandas().xyxy[0]

Images: file paths, PIL images, numpy HWC arrays in RGB (as upstream; a cv2 image is BGR: pass im[..., ::-1]),
or a list of those. URLs are refused: nothing is downloaded. Each image is letterboxed to `size`, run, NMS'd
(model.conf, model.iou, model.classes, model.max_det, model.agnostic) and its boxes scaled back.
"""

from pathlib import Path

import cv2
import numpy as np
import torch

from utils.augmentations import model_input
from utils.boxes import scale_boxes, xyxy2xywh
from utils.cli import UserError
from utils.general import LOGGER, check_img_size, increment_path
from utils.nms import non_max_suppression
from utils.plots import Annotator, colors, detections_line


def _as_rgb(im, i):
    """(RGB uint8 HWC array, file name) of one input image."""
    if isinstance(im, (str, Path)):
        s = str(im)
        if s.lower().startswith(("http://", "https://", "rtsp://", "rtmp://")):
            raise UserError(f"image {i}: {s}: URLs are not fetched (offline); download it and pass the file")
        from utils.image_io import read_image

        bgr, problem = read_image(s)
        if bgr is None:
            raise UserError(f"{s}: not a readable image ({problem})")
        return bgr[:, :, ::-1], Path(s).name
    if hasattr(im, "convert") and hasattr(im, "size"):  # PIL: a lazily opened file is decoded by convert()
        from utils.image_io import size_problem

        try:
            w, h = (int(x) for x in im.size)
        except (TypeError, ValueError):
            raise UserError(f"image {i}: PIL image without a (width, height) size") from None
        problem = size_problem(w, h)
        if problem:
            raise UserError(f"image {i}: PIL image of {problem}, not decoded")
        try:
            return np.asarray(im.convert("RGB")), f"image{i}.jpg"
        except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for truncated or corrupt data
            where = getattr(im, "filename", "") or f"image {i}"
            raise UserError(f"{where}: PIL cannot decode it ({e})") from None
    if isinstance(im, np.ndarray):
        if im.ndim == 2:
            im = np.stack([im] * 3, -1)
        if im.ndim != 3 or im.shape[2] not in (3, 4) or 0 in im.shape:
            raise UserError(f"image {i}: numpy image of shape {im.shape}; expected HWC with 3 channels")
        im = im[:, :, :3]
        if im.dtype != np.uint8:
            im = np.clip(im * (255 if im.max() <= 1 else 1), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(im), f"image{i}.jpg"
    raise UserError(f"image {i}: unsupported input {type(im).__name__} (a path, PIL image or numpy array)")


class HubModel:
    """Any weights InferenceBackend loads, wrapped for images as they come (upstream's AutoShape)."""

    conf, iou, classes, max_det, agnostic = 0.25, 0.45, None, 1000, False

    def __init__(self, path, device=None):
        from utils.backends import InferenceBackend
        from utils.torch_utils import select_device

        self.backend = InferenceBackend(path, device=select_device("" if device is None else str(device)))
        self.names, self.stride = self.backend.names, self.backend.stride

    def __call__(self, ims, size=640):
        ims = list(ims) if isinstance(ims, (list, tuple)) else [ims]
        fixed = self.backend.fixed_shape
        size = tuple(fixed[2:]) if fixed else tuple(check_img_size([size, size] if isinstance(size, int)
                                                                  else list(size), s=self.stride))
        originals, files, preds = [], [], []
        for i, im in enumerate(ims):
            rgb, name = _as_rgb(im, i)
            x = torch.from_numpy(model_input(rgb, size, scaleup=False, rgb=True))  # one shape: static artifacts too
            det = non_max_suppression(self.backend(x), self.conf, self.iou, self.classes, self.agnostic,
                                      max_det=self.max_det)[0]
            det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], rgb.shape[:2]).round()
            originals.append(rgb)
            files.append(name)
            preds.append(det.cpu())
        return Detections(originals, preds, files, self.names)


class Detections:
    """Detections of a batch: xyxy / xywh / xyxyn / xywhn (one (n, 6) tensor per image: box, conf, class),
    print(), save(), render(), pandas()."""

    def __init__(self, ims, pred, files, names):
        self.ims, self.pred, self.files, self.names = ims, pred, files, names
        self.xyxy = pred
        self.xywh = [torch.cat([xyxy2xywh(p[:, :4]), p[:, 4:]], 1) for p in pred]
        gains = [torch.tensor([im.shape[1], im.shape[0]] * 2 + [1, 1], dtype=torch.float32) for im in ims]
        self.xyxyn = [p / g for p, g in zip(self.xyxy, gains)]
        self.xywhn = [p / g for p, g in zip(self.xywh, gains)]
        self.n = len(pred)

    def __len__(self):
        return self.n

    def _summary(self, i):
        found = detections_line(self.pred[i], self.names).rstrip(", ")
        return f"image {i + 1}/{self.n}: {self.ims[i].shape[0]}x{self.ims[i].shape[1]} {found or '(no detections)'}"

    def __str__(self):
        return "\n".join(self._summary(i) for i in range(self.n))

    def print(self):
        LOGGER.info(str(self))

    def render(self, labels=True):
        """The images with their boxes drawn (RGB arrays)."""
        out = []
        for im, p in zip(self.ims, self.pred):
            ann = Annotator(np.ascontiguousarray(im[:, :, ::-1]))  # the annotator draws on BGR
            for *box, conf, cls in p.tolist():
                label = f"{self.names.get(int(cls), int(cls))} {conf:.2f}" if labels else ""
                ann.box_label(box, label, color=colors(int(cls), True))
            out.append(ann.result()[:, :, ::-1])
        return out

    def save(self, labels=True, save_dir="runs/detect/exp", exist_ok=False):
        """Write the rendered images under save_dir (incremented); returns the folder. A failed write is an
        error naming the file, never a silent success."""
        d = increment_path(Path(save_dir), exist_ok=exist_ok, mkdir=True)
        for name, im in zip(self.files, self.render(labels)):
            f = d / name
            if not cv2.imwrite(str(f), np.ascontiguousarray(im[:, :, ::-1])):
                raise UserError(f"{f}: could not write the image")
        LOGGER.info(f"Saved {self.n} image{'s' * (self.n > 1)} to {d}")
        return d

    def pandas(self):
        """A copy whose xyxy / xywh / xyxyn / xywhn are pandas DataFrames (pandas is optional)."""
        try:
            import pandas as pd
        except ImportError as e:
            raise UserError("Detections.pandas() needs pandas: pip install pandas") from e
        new = Detections(self.ims, self.pred, self.files, self.names)
        for attr, cols in (("xyxy", ["xmin", "ymin", "xmax", "ymax"]), ("xywh", ["xcenter", "ycenter", "width", "height"]),
                           ("xyxyn", ["xmin", "ymin", "xmax", "ymax"]), ("xywhn", ["xcenter", "ycenter", "width", "height"])):
            frames = []
            for p in getattr(self, attr):
                rows = [r[:5] + [int(r[5]), self.names.get(int(r[5]), str(int(r[5])))] for r in p.tolist()]
                frames.append(pd.DataFrame(rows, columns=[*cols, "confidence", "class", "name"]))
            setattr(new, attr, frames)
        return new
