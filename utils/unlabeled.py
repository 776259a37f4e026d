"""Unlabeled images for distillation (train_kd.py --unlabeled PATH --unlabeled-ratio R).

The labeled batch is trained as usual; round(R * n_labeled) unlabeled images, augmented by the same
pipeline as the labeled ones (LoadImagesAndLabels: mosaic, perspective, HSV, flips, mixup), are appended
after it. The detection loss scores only the labeled part (the batch's fifth element, n_labeled, reaches
ComputeLoss as `labeled`); the KD losses see the whole batch. Label files beside unlabeled images are
never read, and the label checks of the training set never see the unlabeled set.
"""

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from utils.cli import OptionError, UserError
from utils.dataloaders import PIN_MEMORY, LoadImagesAndLabels, seed_worker
from utils.general import LOGGER, NUM_THREADS, colorstr, warn_each
from utils.image_io import IMG_FORMATS
from utils.label_files import check_image, list_image_files

FROM_DATA = "<data>"  # `--unlabeled` without a path: the dataset YAML's `unlabeled:` key
MAX_MESSAGES = 100  # problem images named one by one, then a count


def unlabeled_count(ratio, n_labeled):
    """Unlabeled images that join a batch of n_labeled labeled ones: ratio * n, rounded half up."""
    return math.floor(ratio * n_labeled + 0.5)


def resolve_unlabeled(spec, data):
    """--unlabeled value -> what list_image_files reads: a folder, a .txt list (entries relative to it),
    a glob, or (FROM_DATA) the dataset YAML's `unlabeled:` key, already resolved like train/val."""
    if spec == FROM_DATA:
        value = (data or {}).get("unlabeled")
        if not value:
            where = (data or {}).get("yaml_file", "the dataset YAML (--data)")
            raise OptionError(f"--unlabeled without a path reads the 'unlabeled:' key of {where}, which has none; "
                              "add 'unlabeled: <folder | list.txt | glob>' there or give --unlabeled PATH")
        return value
    if str(spec).lower().endswith((".yaml", ".yml")):
        raise OptionError(f"--unlabeled {spec}: give a folder, a .txt list or a glob of images; for the "
                          "'unlabeled:' key of the dataset YAML pass --unlabeled alone")
    return str(spec)


def check_semi_options(opt):
    """Training options that cannot carry appended unlabeled images, refused with the flag's name."""
    for flag, why in (("rect", "rectangular batches have one shape per batch, unlabeled images another"),
                      ("quad", "the quad collate tiles 4 images into one")):
        if getattr(opt, flag, False):
            raise OptionError(f"--unlabeled does not work with --{flag}: {why}")


class UnlabeledImages(LoadImagesAndLabels):
    """Images without labels through LoadImagesAndLabels' loading and augmentation; every sample has no
    labels. Unreadable images are named once in the log and skipped."""

    def _scan(self, path, prefix, nc):
        try:
            files = list_image_files(path, prefix)
        except FileNotFoundError as e:
            raise UserError(f"--unlabeled: {e}") from None
        if not files:
            raise UserError(f"--unlabeled {path}: no images found (formats: {', '.join(IMG_FORMATS)})")
        with ThreadPoolExecutor(NUM_THREADS) as pool:
            checks = list(pool.map(check_image, files))
        msgs = [msg for _, msg in checks if msg]
        warn_each(msgs, prefix, MAX_MESSAGES, "image(s) with problems")
        records = [{"im_file": f, "labels": np.zeros((0, 5), np.float32), "shape": shape, "segments": []}
                   for f, (shape, _) in zip(files, checks) if shape is not None]
        counts = {"images": len(records), "corrupt": len(files) - len(records)}
        if not records:
            raise UserError(f"--unlabeled {path}: none of its {len(files)} image(s) is readable (see the warnings)")
        LOGGER.info(f"{prefix}{counts['images']} images, {counts['corrupt']} unreadable skipped")
        return records, counts


class UnlabeledBatches(Sampler):
    """Index lists of the given sizes (zero sizes left out), drawn from seeded permutations of the
    unlabeled set, one after another (every image once before any twice). Set `seed` before each epoch."""

    def __init__(self, n_images, sizes):
        super().__init__()
        self.n, self.sizes, self.seed = n_images, [k for k in sizes if k], 0

    def __len__(self):
        return len(self.sizes)

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        order, pos = rng.permutation(self.n), 0
        for k in self.sizes:
            batch = []
            while len(batch) < k:
                if pos == self.n:
                    order, pos = rng.permutation(self.n), 0
                take = order[pos:pos + k - len(batch)]
                batch += take.tolist()
                pos += len(take)
            yield batch


def labeled_batch_sizes(loader):
    """Sizes of the batches a (non-quad) DataLoader yields per epoch."""
    n, bs = len(loader.sampler), loader.batch_size
    sizes = [bs] * (n // bs) + ([n % bs] if n % bs and not loader.drop_last else [])
    if len(sizes) != len(loader):
        raise RuntimeError(f"unexpected train loader: {len(loader)} batches, expected {len(sizes)}")
    return sizes


def draw_seed(generator):
    """One 62-bit seed from a torch generator (the global one when None)."""
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator))


class SemiLoader:
    """The engine's train loader with unlabeled images appended to each batch.

    Yields (imgs, targets, paths, shapes, n_labeled): the labeled batch, then unlabeled_count(ratio, n_labeled)
    unlabeled images (targets index the labeled images only). An epoch's unlabeled draw (order and worker
    seeds) is seeded from the labeled loader's generator, which the engine reseeds every epoch
    (Trainer._epoch_seed): a resumed run draws what the uninterrupted one drew. `n_labeled` is also kept
    as an attribute: the labeled count of the batch last yielded.
    """

    def __init__(self, labeled, dataset, ratio, workers=0):
        self.labeled, self.dataset, self.ratio = labeled, dataset, float(ratio)
        sizes = [unlabeled_count(self.ratio, n) for n in labeled_batch_sizes(labeled)]
        self.batches = UnlabeledBatches(len(dataset), sizes)
        self.per_batch = max(sizes, default=0)
        self.loader = DataLoader(dataset, batch_sampler=self.batches, num_workers=workers,
                                 collate_fn=LoadImagesAndLabels.collate_fn,
                                 worker_init_fn=labeled.worker_init_fn or seed_worker,  # its priority too
                                 generator=torch.Generator(), pin_memory=PIN_MEMORY and torch.cuda.is_available())
        self.n_labeled = None

    @property
    def generator(self):
        """The labeled loader's generator: the engine reseeds it per epoch, the unlabeled draw follows."""
        return self.labeled.generator

    @property
    def sampler(self):
        return self.labeled.sampler

    @property
    def batch_size(self):
        return self.labeled.batch_size

    def __len__(self):
        return len(self.labeled)

    def __iter__(self):
        seed = draw_seed(self.labeled.generator)
        self.batches.seed = seed
        self.loader.generator.manual_seed(seed)
        extra = iter(self.loader) if len(self.batches) else None
        for imgs, targets, paths, shapes in self.labeled:
            n = imgs.shape[0]
            k = unlabeled_count(self.ratio, n)
            if k:
                u_imgs, _, u_paths, u_shapes = next(extra)
                if u_imgs.shape[0] != k or u_imgs.shape[1:] != imgs.shape[1:]:
                    raise RuntimeError(f"unlabeled batch {tuple(u_imgs.shape)} does not fit the labeled batch "
                                       f"{tuple(imgs.shape)} (expected {k} images)")
                imgs, paths, shapes = torch.cat((imgs, u_imgs)), (*paths, *u_paths), (*shapes, *u_shapes)
            self.n_labeled = n
            yield imgs, targets, paths, shapes, n


def attach_unlabeled(engine, spec, ratio):
    """Build the unlabeled set (the labeled set's image size, stride, augmentation and cache) and put a
    SemiLoader in place of engine.train_loader -> the SemiLoader. Called from the Distiller's setup."""
    opt, labeled = engine.opt, engine.dataset
    check_semi_options(opt)
    path = resolve_unlabeled(spec, getattr(engine, "data_dict", None))
    prefix = colorstr("unlabeled: ")
    cache = getattr(opt, "cache", None)
    dataset = UnlabeledImages(path, labeled.img_size, augment=True, hyp=labeled.hyp, stride=labeled.stride,
                              cache_images=None if cache == "val" else cache, prefix=prefix)
    loader = SemiLoader(engine.train_loader, dataset, ratio, workers=engine.train_loader.num_workers)
    shared = len(set(dataset.im_files) & set(labeled.im_files))
    also = f"; {shared} of them are labeled training images too" if shared else ""
    LOGGER.info(f"{prefix}{len(dataset)} images from {path}: {loader.per_batch} per batch of "
                f"{engine.train_loader.batch_size} labeled (--unlabeled-ratio {ratio:g}); detection loss on the "
                f"labeled images only, KD on all{also}")
    engine.train_loader = loader
    return loader
