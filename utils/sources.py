"""Inference sources for detect.py: image files, folders, globs, .txt lists and video files.

Webcam/stream sources (LoadStreams) are not supported.
"""

import glob
import os
from pathlib import Path

import cv2
import numpy as np

from utils.augmentations import letterbox
from utils.cli import OptionError
from utils.general import LOGGER
from utils.image_io import IMG_FORMATS, VID_FORMATS, imread


def _expand_source(path):
    """Source -> sorted list of files (images and videos); raises naming the path when nothing exists."""
    if isinstance(path, str) and path.endswith(".txt") and os.path.isfile(path):
        parent = Path(path).parent
        path = [x.strip() if os.path.isabs(x.strip()) else str(parent / x.strip())
                for x in Path(path).read_text(errors="replace").splitlines() if x.strip()]
    files = []
    for p in sorted(path) if isinstance(path, (list, tuple)) else [path]:
        p = str(Path(p).resolve()) if "*" not in str(p) else str(p)
        if "*" in p:
            files.extend(sorted(glob.glob(p, recursive=True)))
        elif os.path.isdir(p):
            files.extend(sorted(glob.glob(os.path.join(p, "*.*"))))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist")
    return files


class LoadImages:
    """Iterate (path, im (3, H, W) letterboxed RGB uint8, im0 original BGR, cap, description)."""

    def __init__(self, path, img_size=640, stride=32, auto=True, transforms=None, vid_stride=1):
        if isinstance(path, int) or (isinstance(path, str) and path.isnumeric()):
            raise OptionError(f"webcam/stream source {path!r} is not supported (no LoadStreams)")
        files = _expand_source(path)
        images = [x for x in files if x.split(".")[-1].lower() in IMG_FORMATS]
        videos = [x for x in files if x.split(".")[-1].lower() in VID_FORMATS]
        other = [x for x in files if x not in images and x not in videos]
        if other:
            LOGGER.warning(f"WARNING: skipping {len(other)} file(s) that are neither image nor video: "
                           f"{', '.join(os.path.basename(x) for x in other[:5])}{' ...' if len(other) > 5 else ''}")
        self.img_size, self.stride, self.auto = img_size, stride, auto
        self.transforms = transforms
        self.vid_stride = max(int(vid_stride), 1)
        self.files = images + videos
        self.nf = len(self.files)
        self.video_flag = [False] * len(images) + [True] * len(videos)
        self.mode = "image"
        self.cap = None
        self.frame, self.frames = 0, 0
        if self.nf == 0:
            raise FileNotFoundError(f"no images or videos found in {path}. "
                                    f"Supported: images {IMG_FORMATS}, videos {VID_FORMATS}")

    def __iter__(self):
        self.count = 0
        return self

    def _new_video(self, path):
        self.frame = 0
        self.cap = cv2.VideoCapture(path)
        self.frames = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) / self.vid_stride)

    def _next_video_frame(self, path):
        """Next frame of the current video (opening it if needed), or None when it is exhausted/unreadable."""
        if self.cap is None:
            self._new_video(path)
            if not self.cap.isOpened():
                LOGGER.warning(f"WARNING: {path}: cannot open video, skipped")
                self.cap = None
                return None
        for _ in range(self.vid_stride):
            self.cap.grab()
        ok, im0 = self.cap.retrieve()
        if not ok:
            self.cap.release()
            self.cap = None
            return None
        self.frame += 1
        return im0

    def __next__(self):
        while self.count < self.nf:
            path = self.files[self.count]
            if self.video_flag[self.count]:
                self.mode = "video"
                im0 = self._next_video_frame(path)
                if im0 is None:
                    self.count += 1
                    continue
                s = f"video {self.count + 1}/{self.nf} ({self.frame}/{self.frames}) {path}: "
            else:
                self.mode = "image"
                self.count += 1
                im0 = imread(path)
                if im0 is None:
                    LOGGER.warning(f"WARNING: {path}: unreadable or not an image, skipped")
                    continue
                s = f"image {self.count}/{self.nf} {path}: "
            return path, self._prepare(im0), im0, self.cap, s
        raise StopIteration

    def _prepare(self, im0):
        if self.transforms:
            return self.transforms(im0)
        im = letterbox(im0, self.img_size, stride=self.stride, auto=self.auto)[0]
        return np.ascontiguousarray(im.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB

    def __len__(self):
        return self.nf
