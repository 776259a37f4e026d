"""Inference sources for detect.py: image files, folders, globs, .txt lists and video files.

Webcam/stream sources (LoadStreams) are not supported.
"""

import glob
import math
import os
import stat
from pathlib import Path

import cv2
import numpy as np

from utils.augmentations import letterbox
from utils.cli import OptionError, UserError
from utils.general import LOGGER
from utils.file_listing import glob_files, list_file_entries
from utils.image_io import IMG_FORMATS, VID_FORMATS, cv_error_reason, file_kind, read_image, size_problem


def _expand_source(path):
    """Source -> sorted list of files (images and videos); raises naming the path when nothing exists.

    Only regular files are returned: a FIFO, socket or device (which would block a read or a video open)
    is skipped with a warning naming it; a ``**`` glob visits each real folder once (symlink loops)."""
    if isinstance(path, str) and path.endswith(".txt") and os.path.lexists(path):
        path = list_file_entries(Path(path))
    files, special = [], []
    for p in sorted(path) if isinstance(path, (list, tuple)) else [path]:
        p = str(Path(p).resolve()) if "*" not in str(p) else str(p)
        if "*" in p:
            found = [f for f, _ in glob_files(p, special)]
        elif os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(glob.escape(p), "*.*")))
        elif os.path.exists(p):
            found = [p]
        else:
            raise FileNotFoundError(f"{p} does not exist")
        for f in found:
            try:
                mode = os.stat(f).st_mode
            except OSError:
                files.append(f)  # vanished or a dangling link: its read names it
                continue
            if stat.S_ISREG(mode):
                files.append(f)
            elif not stat.S_ISDIR(mode):
                special.append((f, file_kind(mode)))
    for f, kind in special:
        LOGGER.warning(f"WARNING: {f}: is not a regular file ({kind}), skipped")
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
        self.source = path
        self.count, self.yielded = 0, 0
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
        self.count, self.yielded = 0, 0
        return self

    def _new_video(self, path):
        """Open a video -> None, or why it cannot be read (not opened; frames over utils.limits)."""
        self.frame = 0
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            return "cannot open video"
        count = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frames = int(count / self.vid_stride) if math.isfinite(count) and count > 0 else 0
        w, h = (self.cap.get(p) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT))
        if math.isfinite(w) and math.isfinite(h) and (w > 0 or h > 0):
            problem = size_problem(int(w), int(h))
            if problem:
                return f"frames of {problem}"
        return None

    def _next_video_frame(self, path):
        """Next frame of the current video (opening it if needed), or None when it is exhausted/unreadable.
        A video that cannot be opened or decoded is skipped with a warning naming it."""
        try:
            if self.cap is None:
                problem = self._new_video(path)
                if problem:
                    LOGGER.warning(f"WARNING: {path}: {problem}, skipped")
                    self._close_video()
                    return None
            for _ in range(self.vid_stride):
                self.cap.grab()
            ok, im0 = self.cap.retrieve()
        except cv2.error as e:
            LOGGER.warning(f"WARNING: {path}: video frame {self.frame + 1} cannot be decoded ({cv_error_reason(e)}), "
                           "rest skipped")
            self._close_video()
            return None
        if not ok or im0 is None or im0.ndim != 3 or im0.size == 0:
            if self.frame == 0 and self.cap is not None:
                LOGGER.warning(f"WARNING: {path}: no frame could be read from this video, skipped")
            self._close_video()
            return None
        self.frame += 1
        return im0

    def _close_video(self):
        if self.cap is not None:
            try:
                self.cap.release()
            except cv2.error:
                pass
        self.cap = None

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
                im0, problem = read_image(path)
                if im0 is None:
                    LOGGER.warning(f"WARNING: {path}: {problem}, skipped")
                    continue
                s = f"image {self.count}/{self.nf} {path}: "
            self.yielded += 1
            return path, self._prepare(im0), im0, self.cap, s
        if not self.yielded:
            raise UserError(f"nothing to detect on in {self.source}: none of its {self.nf} file(s) could be read "
                            "(see the warnings above)")
        raise StopIteration

    def _prepare(self, im0):
        if self.transforms:
            return self.transforms(im0)
        im = letterbox(im0, self.img_size, stride=self.stride, auto=self.auto)[0]
        return np.ascontiguousarray(im.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB

    def __len__(self):
        return self.nf
