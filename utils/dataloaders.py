"""Training/validation datasets and loaders in upstream YOLOv5 form.

Batch = (imgs uint8 (B, 3, H, W) RGB, targets (N, 6) [image_index, class, xc, yc, w, h] normalised to
the network input, paths, shapes) with shapes[i] None for mosaic samples, else
((h0, w0), ((h / h0, w / w0), (padw, padh))).
"""

import glob
import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, distributed

from utils.augmentations import augment_hsv, copy_paste, letterbox, mixup, random_perspective
from utils.boxes import xyn2xy, xywhn2xyxy, xyxy2xywhn
from utils.general import LOGGER, NUM_THREADS, ROOT, yaml_load
from utils.image_io import IMG_FORMATS, VID_FORMATS, imread, read_image, size_problem  # noqa: F401  (re-exported)
from utils import label_cache, label_files
from utils.label_files import img2label_paths, list_image_files, load_labels  # noqa: F401
from utils.sources import LoadImages  # noqa: F401  (re-exported for detect.py)

RANK = int(os.getenv("RANK", -1))
PIN_MEMORY = str(os.getenv("PIN_MEMORY", True)).lower() == "true"
DEFAULT_HYP = ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"


WORKER_NICE = 19  # background_workers: the lowest priority
NPY_DIR = ".yolov5kd-npy"  # the disk image cache: a hidden folder of ours beside the images

cv2.setNumThreads(0)  # OpenCV's own thread pool would compete with torch and the loader workers for the cores


def npy_cache_paths(im_files):
    """Disk-cache file of each image, named after the image's size and mtime, in our own cache folder
    (beside the images, or under runs/cache/npy when that place is read-only); None if unreadable.

    A stray <image>.npy next to the image is never read, and an edited image never meets its old cache."""
    folders, out = {}, []
    for f in map(Path, im_files):
        try:
            st = f.stat()
        except OSError:
            out.append(None)
            continue
        if f.parent not in folders:
            own = f.parent / NPY_DIR
            ok = label_cache.writable(f.parent) or label_cache.writable(own)
            folders[f.parent] = own if ok else label_cache.fallback_cache_dir("npy", f.parent)
        out.append(folders[f.parent] / f"{f.name}.{st.st_size}-{st.st_mtime_ns}.npy")
    return out


def read_npy_cache(f, hw=None):
    """The cached image array, or None when absent, unreadable or not what we write (then the image is read
    instead). The .npy header is checked before the data is read: uint8 (h, w, 3) within utils.limits (and
    of the image's size hw when given), exactly as many bytes as it claims; a regular file only."""
    if f is None or not f.is_file():
        return None
    try:
        with open(f, "rb") as fh:
            st = os.fstat(fh.fileno())
            version = np.lib.format.read_magic(fh)
            if version not in ((1, 0), (2, 0)):
                return None
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            if (fortran or dtype != np.uint8 or len(shape) != 3 or shape[2] != 3 or size_problem(shape[1], shape[0])
                    or (hw is not None and tuple(shape[:2]) != tuple(hw))
                    or st.st_size != fh.tell() + shape[0] * shape[1] * 3):
                return None
            im = np.fromfile(fh, np.uint8, count=shape[0] * shape[1] * 3)
        return im.reshape(shape) if im.size == shape[0] * shape[1] * 3 else None
    except (OSError, ValueError, SyntaxError, TypeError):
        return None


def write_npy_cache(f, im):
    """Write atomically (temp name, then rename) and remove this image's older cache files."""
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, im, allow_pickle=False)
    os.replace(tmp, f)
    stem = f.name.rsplit(".", 2)[0]  # image name without the size-mtime key
    for old in f.parent.glob(f"{glob.escape(stem)}.*.npy"):
        if old != f and old.name.rsplit(".", 2)[0] == stem:
            old.unlink(missing_ok=True)


class LoadImagesAndLabels(Dataset):
    """YOLO-format dataset: images + labels, letterbox or mosaic, augmentations driven by hyp keys."""

    cache_version = 1

    def __init__(self, path, img_size=640, batch_size=16, augment=False, hyp=None, rect=False, image_weights=False,
                 cache_images=False, single_cls=False, stride=32, pad=0.0, min_items=0, prefix="", nc=None):
        self.img_size = img_size
        self.augment = augment
        self.hyp = dict(hyp) if hyp is not None else (yaml_load(DEFAULT_HYP) if augment else {})
        self.image_weights = image_weights
        self.rect = False if image_weights else rect
        self.mosaic = self.augment and not self.rect
        self.mosaic_border = [-img_size // 2, -img_size // 2]
        self.stride = stride
        self.path = path
        self.prefix = prefix

        records, self.counts = self._scan(path, prefix, nc)
        self.im_files = [r["im_file"] for r in records]
        self.label_files = img2label_paths(self.im_files)
        self.labels = [r["labels"] for r in records]
        self.shapes = np.array([r["shape"] for r in records], dtype=np.float64).reshape(-1, 2)  # (w, h)
        self.segments = [r["segments"] for r in records]
        if min_items:
            keep = [i for i, lb in enumerate(self.labels) if len(lb) >= min_items]
            LOGGER.info(f"{prefix}{len(self.im_files) - len(keep)}/{len(self.im_files)} images filtered "
                        f"(fewer than {min_items} labels)")
            self._keep(keep)
        if single_cls:
            for lb in self.labels:
                lb[:, 0] = 0

        n = len(self.im_files)
        self.n = n
        self.batch = np.floor(np.arange(n) / batch_size).astype(int)  # batch index of each image
        self.indices = list(range(n))
        if self.rect:
            self._make_rect_batches(batch_size, pad)

        self.ims = [None] * n
        self.im_hw0, self.im_hw = [None] * n, [None] * n
        if cache_images is True:
            cache_images = "ram"
        self.npy_files = npy_cache_paths(self.im_files) if cache_images == "disk" else [None] * n
        if cache_images:
            self._cache_images(cache_images)

    # ---------------------------------------------------------------- setup helpers
    def _scan(self, path, prefix, nc):
        """-> (records of the usable images: im_file, labels, shape, segments; counts by status).
        A subclass may read its images otherwise (utils/unlabeled.py: images without labels)."""
        im_files = list_image_files(path, prefix)
        if not im_files:
            raise FileNotFoundError(f"{prefix}no images found in {path} (formats: {', '.join(IMG_FORMATS)})")
        return load_labels(im_files, prefix, nc=nc)

    def _keep(self, idx):
        self.im_files = [self.im_files[i] for i in idx]
        self.label_files = [self.label_files[i] for i in idx]
        self.labels = [self.labels[i] for i in idx]
        self.segments = [self.segments[i] for i in idx]
        self.shapes = self.shapes[idx]

    def _make_rect_batches(self, batch_size, pad):
        """Sort by aspect ratio; each batch gets the smallest stride-multiple shape that fits its images."""
        ar = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        order = ar.argsort()
        self._keep(order)
        ar = ar[order]
        nb = self.batch[-1] + 1
        shapes = [[1, 1]] * nb
        for i in range(nb):
            ari = ar[self.batch == i]
            mini, maxi = ari.min(), ari.max()
            if maxi < 1:
                shapes[i] = [maxi, 1]
            elif mini > 1:
                shapes[i] = [1, 1 / mini]
        self.batch_shapes = np.ceil(np.array(shapes) * self.img_size / self.stride + pad).astype(int) * self.stride

    def _cache_images(self, mode):
        if mode not in ("ram", "disk"):
            raise ValueError(f"--cache must be 'ram' or 'disk', not {mode!r}")
        fn = self._cache_to_disk if mode == "disk" else self.load_image
        nbytes = 0
        with ThreadPoolExecutor(NUM_THREADS) as pool:
            for i, x in enumerate(pool.map(fn, range(self.n))):
                if mode == "disk":
                    f = self.npy_files[i]
                    nbytes += f.stat().st_size if f is not None and f.exists() else 0
                else:
                    self.ims[i], self.im_hw0[i], self.im_hw[i] = x
                    nbytes += self.ims[i].nbytes
        LOGGER.info(f"{self.prefix}Caching images ({nbytes / 1e9:.2f}GB {mode})")

    def _cache_to_disk(self, i):
        f = self.npy_files[i]
        if f is not None and not f.exists():
            write_npy_cache(f, self._read(i))

    # ---------------------------------------------------------------- loading
    def __len__(self):
        return len(self.im_files)

    def _read(self, i):
        im, problem = read_image(self.im_files[i])
        if im is None:
            raise FileNotFoundError(f"{self.prefix}{self.im_files[i]}: {problem} (it passed the label scan: "
                                    "was it changed since?)")
        return im

    def load_image(self, i):
        """-> (im BGR resized so its long side is img_size, (h0, w0), (h, w))."""
        if self.ims[i] is not None:
            return self.ims[i], self.im_hw0[i], self.im_hw[i]
        im = read_npy_cache(self.npy_files[i], self._scanned_hw(i))
        if im is None:
            im = self._read(i)
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            im = cv2.resize(im, (math.ceil(w0 * r), math.ceil(h0 * r)), interpolation=interp)
        return im, (h0, w0), im.shape[:2]

    def _scanned_hw(self, i):
        """(h, w) the label scan found for image i (what a disk-cache file of it must hold)."""
        w, h = self.shapes[i]
        return int(h), int(w)

    def _perspective_kwargs(self):
        h = self.hyp
        return dict(degrees=h.get("degrees", 0.0), translate=h.get("translate", 0.0), scale=h.get("scale", 0.0),
                    shear=h.get("shear", 0.0), perspective=h.get("perspective", 0.0))

    def load_mosaic(self, index):
        """4 images on a 2s x 2s canvas of 114 around a random centre, then random perspective to s x s."""
        s = self.img_size
        yc, xc = (int(random.uniform(-x, 2 * s + x)) for x in self.mosaic_border)
        indices = [index] + random.choices(self.indices, k=3)
        random.shuffle(indices)
        labels4, segments4 = [], []
        img4 = None
        for i, idx in enumerate(indices):
            img, _, (h, w) = self.load_image(idx)
            if img4 is None:
                img4 = np.full((s * 2, s * 2, img.shape[2]), 114, dtype=np.uint8)
            if i == 0:  # top left
                x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
                x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
            elif i == 1:  # top right
                x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s * 2), yc
                x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
            elif i == 2:  # bottom left
                x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s * 2, yc + h)
                x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
            else:  # bottom right
                x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s * 2), min(s * 2, yc + h)
                x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
            img4[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
            padw, padh = x1a - x1b, y1a - y1b
            labels = self.labels[idx].copy()
            if labels.size:
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], w, h, padw, padh)
            labels4.append(labels)
            segments4.extend(xyn2xy(x, w, h, padw, padh) for x in self.segments[idx])
        labels4 = np.concatenate(labels4, 0)
        np.clip(labels4[:, 1:], 0, 2 * s, out=labels4[:, 1:])
        for x in segments4:
            np.clip(x, 0, 2 * s, out=x)
        if len(segments4) != len(labels4):
            segments4 = []  # some images without polygons: boxes only
        img4, labels4, segments4 = copy_paste(img4, labels4, segments4, p=self.hyp.get("copy_paste", 0.0))
        return random_perspective(img4, labels4, segments4, border=self.mosaic_border, **self._perspective_kwargs())

    def _load_letterboxed(self, index):
        img, (h0, w0), (h, w) = self.load_image(index)
        shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
        img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
        shapes = (h0, w0), ((h / h0, w / w0), pad)
        labels = self.labels[index].copy()
        if labels.size:
            labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
        if self.augment:
            img, labels = random_perspective(img, labels, **self._perspective_kwargs())
        return img, labels, shapes

    def __getitem__(self, index):
        index = self.indices[index]  # linear, shuffled, or image_weights
        hyp = self.hyp
        if self.mosaic and random.random() < hyp.get("mosaic", 0.0):
            img, labels = self.load_mosaic(index)
            shapes = None
            if random.random() < hyp.get("mixup", 0.0):
                img, labels = mixup(img, labels, *self.load_mosaic(random.choice(self.indices)))
        else:
            img, labels, shapes = self._load_letterboxed(index)

        nl = len(labels)
        if nl:
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=img.shape[1], h=img.shape[0], clip=True, eps=1e-3)
        if self.augment:
            augment_hsv(img, hgain=hyp.get("hsv_h", 0.0), sgain=hyp.get("hsv_s", 0.0), vgain=hyp.get("hsv_v", 0.0))
            if random.random() < hyp.get("flipud", 0.0):
                img = np.flipud(img)
                if nl:
                    labels[:, 2] = 1 - labels[:, 2]
            if random.random() < hyp.get("fliplr", 0.0):
                img = np.fliplr(img)
                if nl:
                    labels[:, 1] = 1 - labels[:, 1]

        labels_out = torch.zeros((nl, 6))
        if nl:
            labels_out[:, 1:] = torch.from_numpy(np.asarray(labels, dtype=np.float32))
        img = np.ascontiguousarray(img.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(img), labels_out, self.im_files[index], shapes

    # ---------------------------------------------------------------- batching
    @staticmethod
    def collate_fn(batch):
        im, label, path, shapes = zip(*batch)
        for i, lb in enumerate(label):
            lb[:, 0] = i  # image index within the batch
        return torch.stack(im, 0), torch.cat(label, 0), path, shapes

    @staticmethod
    def collate_fn4(batch):
        """Quad collate: every 4 images become one 2x image (a 2x2 tile, or image 1 upsampled)."""
        im, label, path, shapes = zip(*batch)
        n = len(shapes) // 4
        im4, label4, path4, shapes4 = [], [], path[:n], shapes[:n]
        ho = torch.tensor([[0.0, 0, 0, 1, 0, 0]])
        wo = torch.tensor([[0.0, 0, 1, 0, 0, 0]])
        s = torch.tensor([[1, 1, 0.5, 0.5, 0.5, 0.5]])
        for i in range(n):
            i *= 4
            if random.random() < 0.5:
                x = torch.nn.functional.interpolate(im[i].unsqueeze(0).float(), scale_factor=2.0, mode="bilinear",
                                                    align_corners=False)[0].type(im[i].type())
                lb = label[i]
            else:
                x = torch.cat((torch.cat((im[i], im[i + 1]), 1), torch.cat((im[i + 2], im[i + 3]), 1)), 2)
                lb = torch.cat((label[i], label[i + 1] + ho, label[i + 2] + wo, label[i + 3] + ho + wo), 0) * s
            im4.append(x)
            label4.append(lb)
        for i, lb in enumerate(label4):
            lb[:, 0] = i
        return torch.stack(im4, 0), torch.cat(label4, 0), path4, shapes4


def seed_worker(worker_id, nice=0):
    """Seed numpy and random in each worker from torch's per-worker seed (reproducible with a generator);
    nice > 0 lowers the worker's CPU priority by that much (where the OS allows it)."""
    if nice > 0 and hasattr(os, "nice"):
        try:
            os.nice(nice)
        except OSError:  # not permitted here: the worker keeps its priority
            pass
    worker_seed = torch.initial_seed() % 2 ** 32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def create_dataloader(path, imgsz, batch_size, stride, single_cls=False, hyp=None, augment=False, cache=False, pad=0.0,
                      rect=False, rank=-1, workers=8, image_weights=False, quad=False, prefix="", shuffle=False,
                      seed=0, nc=None, background_workers=False):
    """-> (DataLoader, LoadImagesAndLabels). Workers persist across epochs (except with image_weights,
    whose per-epoch dataset.indices must reach the workers). Call loader.sampler.set_epoch(e) under DDP.

    background_workers: run the workers at the lowest CPU priority, for a model computing on the CPU: they
    then fill the cycles torch's threads leave idle instead of preempting them (a preempted thread stalls
    every other at the next barrier: yolov5n's forward ran 2x slower beside two loader workers on 2 cores)."""
    if rect and shuffle:
        LOGGER.warning(f"{prefix}WARNING: --rect is incompatible with DataLoader shuffle, setting shuffle=False")
        shuffle = False
    dataset = LoadImagesAndLabels(path, imgsz, batch_size, augment=augment, hyp=hyp, rect=rect,
                                  cache_images=cache, single_cls=single_cls, stride=int(stride), pad=pad,
                                  image_weights=image_weights, prefix=prefix, nc=nc)
    batch_size = min(batch_size, len(dataset))
    nd = torch.cuda.device_count()
    nw = min(os.cpu_count() // max(nd, 1), batch_size if batch_size > 1 else 0, workers)
    sampler = None if rank == -1 else distributed.DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(6148914691236517205 + seed + max(rank, 0))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, num_workers=nw,
                        sampler=sampler, pin_memory=PIN_MEMORY and torch.cuda.is_available(),
                        collate_fn=LoadImagesAndLabels.collate_fn4 if quad else LoadImagesAndLabels.collate_fn,
                        worker_init_fn=partial(seed_worker, nice=WORKER_NICE if background_workers else 0),
                        generator=generator,
                        persistent_workers=nw > 0 and not image_weights)
    return loader, dataset
