"""train_kd.py --unlabeled: unlabeled images appended to the batch get the KD losses only (CPU, 64 px)."""

import csv
import glob
from pathlib import Path

import pytest
import torch
from test_bad_data import make_bad_folder
from test_distiller import save_ours, tiny_model
from test_engine import load_ckpt, make_tiny_data
from test_train_kd import _interrupt_after_first_epoch, common_args

from utils.cli import OptionError, UserError
from utils.dataset_yaml import check_dataset
from utils.distill.config import KDConfig
from utils.loss import ComputeLoss
from utils.unlabeled import FROM_DATA, SemiLoader, UnlabeledImages, resolve_unlabeled

NAMES = {0: "box", 1: "blob"}  # make_tiny_data's classes


@pytest.fixture(scope="module")
def semi(tmp_path_factory):
    """4 labeled train images (+2 val), 6 unlabeled images that have label files beside them (never read),
    a tiny teacher, and the dataset YAML with an 'unlabeled:' key relative to its path."""
    root = tmp_path_factory.mktemp("semi")
    data = make_tiny_data(root / "lab", n_train=4, n_val=2)
    make_tiny_data(root / "unl", n_train=6, n_val=0, seed=1)
    unl = root / "unl" / "images" / "train"
    with_key = root / "lab" / "semi.yaml"
    with_key.write_text(data.read_text() + "unlabeled: ../unl/images/train\n")
    teacher = tiny_model(nc=2, seed=3)
    teacher.names = dict(NAMES)
    return {"data": data, "with_key": with_key, "unl": unl,
            "teacher": save_ours(teacher, root / "teacher.pt"), "root": root}


def run_semi(semi, project, name, *extra, data=None):
    import train_kd
    args = common_args(data or semi["data"], project, name) + ["--teacher_weight", semi["teacher"], *extra]
    train_kd.main(train_kd.parse_opt(args))
    return project / name


def rows(save):
    with open(save / "results.csv") as f:
        return [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(f)]


class Spy:
    """Record what the engine's detection loss and the Distiller see in each training step."""

    def __init__(self, monkeypatch):
        from utils import engine
        from utils.distill import distiller as dm
        self.det, self.kd_batch = [], []
        real_step = dm.Distiller.step_loss
        spy = self

        class Recording(ComputeLoss):
            def __call__(self, preds, targets, labeled=None):
                out = super().__call__(preds, targets, labeled=labeled)
                if preds[0].requires_grad:  # training steps (validation runs without grad)
                    n = preds[0].shape[0] if labeled is None else labeled
                    alone = super().__call__([p[:n].detach() for p in preds], targets)[0] if n else torch.zeros(1)
                    spy.det.append({"bs": preds[0].shape[0], "labeled": labeled, "loss": out[0].detach(),
                                    "alone": alone, "max_target_image": int(targets[:, 0].max()) if len(targets) else -1})
                return out

        def step(d, imgs, targets, preds):
            spy.kd_batch.append(imgs.shape[0])
            return real_step(d, imgs, targets, preds)
        monkeypatch.setattr(engine, "ComputeLoss", Recording)
        monkeypatch.setattr(dm.Distiller, "step_loss", step)


# ------------------------------------------------------------------ the loss on a mixed batch
def test_detection_loss_scores_only_the_labeled_images():
    """labeled=n: the loss on the first n images' predictions alone; the unlabeled predictions neither change
    it nor get a gradient from it. labeled=0: zero, still part of the graph."""
    model = tiny_model(nc=2).train()
    model.hyp.update({"box": 0.05, "obj": 1.0, "cls": 0.5, "anchor_t": 4.0})
    loss_fn = ComputeLoss(model)
    preds = [p.detach().requires_grad_() for p in model(torch.rand(4, 3, 64, 64))]
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.3], [1, 0, 0.3, 0.6, 0.2, 0.5]])
    mixed, items = loss_fn(preds, targets, labeled=2)
    alone, items_alone = loss_fn([p[:2] for p in preds], targets)
    assert torch.equal(mixed, alone) and torch.equal(items, items_alone)
    assert not torch.allclose(loss_fn(preds, targets)[0], mixed)  # the whole batch would differ
    other = [torch.cat((p[:2], torch.randn_like(p[2:]) * 5)) for p in preds]
    assert torch.equal(loss_fn(other, targets, labeled=2)[0], mixed)
    grads = torch.autograd.grad(mixed.sum(), preds)
    assert all(g[2:].abs().sum() == 0 and g[:2].abs().sum() > 0 for g in grads)
    zero, zero_items = loss_fn(preds, targets[:0], labeled=0)
    assert zero.item() == 0 and zero.requires_grad and not zero_items.any()
    assert all(g.abs().sum() == 0 for g in torch.autograd.grad(zero.sum(), preds))


# ------------------------------------------------------------------ training runs
def test_mixed_batches_detection_on_labeled_kd_on_all(tmp_path, semi, monkeypatch):
    """Batch 2 + ratio 1.5 -> 3 unlabeled images appended: the detection loss scores the 2 labeled ones
    (equal to their loss alone), the Distiller gets all 5; the unlabeled label files are never used."""
    spy = Spy(monkeypatch)
    save = run_semi(semi, tmp_path, "semi", "--unlabeled", str(semi["unl"]), "--unlabeled-ratio", "1.5")
    assert spy.kd_batch == [5, 5] and [d["bs"] for d in spy.det] == [5, 5]
    assert all(d["labeled"] == 2 and d["max_target_image"] in (0, 1) for d in spy.det)
    assert all(torch.equal(d["loss"], d["alone"]) for d in spy.det)
    row = rows(save)[0]
    assert row["train/kd"] > 0 and row["train/box_loss"] > 0
    last = load_ckpt(save / "weights" / "last.pt")
    assert last["opt"]["unlabeled"] == str(semi["unl"]) and last["opt"]["unlabeled_ratio"] == 1.5


def test_all_unlabeled_batch_gives_only_the_kd_loss(tmp_path, semi, monkeypatch):
    """Batches without a labeled image: zero detection loss (no NaN), the KD loss trains the student."""
    real_iter = SemiLoader.__iter__

    def unlabeled_only(loader):
        for imgs, targets, paths, shapes, n in real_iter(loader):
            yield imgs[n:], targets[:0], paths[n:], shapes[n:], 0
    monkeypatch.setattr(SemiLoader, "__iter__", unlabeled_only)
    spy = Spy(monkeypatch)
    save = run_semi(semi, tmp_path, "only_unl", "--unlabeled", str(semi["unl"]), "--noval")
    assert spy.kd_batch == [2, 2] and all(d["labeled"] == 0 and d["loss"].item() == 0 for d in spy.det)
    row = rows(save)[0]
    assert row["train/box_loss"] == row["train/obj_loss"] == row["train/cls_loss"] == 0
    assert row["train/kd"] > 0
    trained = load_ckpt(save / "weights" / "last.pt")["ema"]
    assert all(torch.isfinite(v.float()).all() for v in trained.values())


def test_semi_kd_resume_equals_uninterrupted_run(tmp_path, semi, monkeypatch):
    """2 epochs == 1 epoch, kill, --resume: same weights, same unlabeled draws, --unlabeled options restored
    (here from the dataset YAML's 'unlabeled:' key)."""
    import train_kd
    draws = []
    real_iter = SemiLoader.__iter__

    def recording(loader):
        epoch = []
        draws.append(epoch)
        for batch in real_iter(loader):
            epoch.append(tuple(Path(p).name for p in batch[2][batch[4]:]))
            yield batch
    monkeypatch.setattr(SemiLoader, "__iter__", recording)
    two = ["--epochs", "2", "--noval", "--unlabeled", "--unlabeled-ratio", "1.5"]
    full = run_semi(semi, tmp_path, "full", *two, data=semi["with_key"])
    full_draws = list(draws)
    assert len(full_draws) == 2 and full_draws[0] != full_draws[1]  # a new draw every epoch
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m)
        with pytest.raises(KeyboardInterrupt):
            run_semi(semi, tmp_path, "cut", *two, data=semi["with_key"])
    draws.clear()
    cut = tmp_path / "cut"
    train_kd.main(train_kd.parse_opt(["--resume", str(cut / "weights" / "last.pt"), "--workers", "0", "--device", "cpu"]))
    assert draws == [full_draws[1]]
    a, b = load_ckpt(full / "weights" / "last.pt"), load_ckpt(cut / "weights" / "last.pt")
    assert b["epoch"] == 1 and (b["opt"]["unlabeled"], b["opt"]["unlabeled_ratio"]) == (FROM_DATA, 1.5)
    for sa, sb in ((a["model"]["state_dict"], b["model"]["state_dict"]), (a["ema"], b["ema"])):
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------ the unlabeled set
def test_path_forms_resolve_to_the_same_images(tmp_path, semi):
    """A folder, a .txt list (entries relative to it), a glob and the dataset YAML's key (relative to its path)."""
    unl = semi["unl"]
    expected = sorted(str(p) for p in unl.glob("*.jpg"))
    listing = unl.parent / "unl.txt"
    listing.write_text("".join(f"./train/{Path(p).name}\n" for p in expected))
    data = check_dataset(semi["with_key"])
    for spec, d in ((str(unl), None), (str(listing), None), (str(unl / "*.jpg"), None), (FROM_DATA, data)):
        ds = UnlabeledImages(resolve_unlabeled(spec, d), 64, augment=True)
        assert ds.im_files == expected, spec
        assert all(len(lb) == 0 for lb in ds.labels)  # label files exist beside them, never read
    with pytest.raises(OptionError, match="tiny.yaml.*has none"):
        resolve_unlabeled(FROM_DATA, check_dataset(semi["data"]))
    with pytest.raises(OptionError, match="alone"):
        resolve_unlabeled(str(semi["with_key"]), data)
    with pytest.raises(UserError, match="--unlabeled.*nope does not exist"):
        UnlabeledImages(str(tmp_path / "nope"), 64)


def test_bad_unlabeled_images_are_named_once_and_skipped(tmp_path, caplog_yolo):
    images, cases = make_bad_folder(tmp_path / "bad")
    ds = UnlabeledImages(str(images), 64, augment=True)
    corrupt = {s for s, status in cases.items() if status == "corrupt"}
    assert corrupt and {Path(f).stem for f in ds.im_files} == set(cases) - corrupt
    assert ds.counts["corrupt"] == len(corrupt)
    for stem in corrupt:
        name = next(Path(f).name for f in glob.glob(str(images / f"{stem}.*")))
        assert sum(name in r.getMessage() for r in caplog_yolo.records) == 1, stem
    assert all(len(lb) == 0 for lb in ds.labels)
    for k in range(len(ds)):  # every kept image loads through the augmentation
        assert ds[k][0].shape == (3, 64, 64) and len(ds[k][1]) == 0
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="none of its 1 image"):
        UnlabeledImages(str(only_bad), 64)


def test_semi_loader_batches_are_seeded_per_epoch(semi):
    """Labeled images first, then round(R * n) unlabeled ones; the draw follows the labeled loader's
    generator seed (what the engine reseeds per epoch), every unlabeled image once before any twice."""
    from utils.dataloaders import create_dataloader
    labeled, _ = create_dataloader(str(semi["data"].parent / "images" / "train"), 64, 3, 32, augment=True,
                                   shuffle=True, workers=0)
    loader = SemiLoader(labeled, UnlabeledImages(str(semi["unl"]), 64, augment=True), ratio=2.0)

    def epoch(seed):
        labeled.generator.manual_seed(seed)
        out = [(b[0].shape[0], b[4], int(b[1][:, 0].max()) if len(b[1]) else -1, tuple(b[2][b[4]:])) for b in loader]
        return out, [p for *_, drawn in out for p in drawn]
    first, drawn = epoch(7)
    assert [(bs, n) for bs, n, *_ in first] == [(9, 3), (3, 1)]  # 3 + 6 unlabeled, then 1 + 2
    assert all(t < n for _, n, t, _ in first)
    assert sorted(drawn[:6]) == sorted(str(p) for p in semi["unl"].glob("*.jpg"))
    assert epoch(7) == (first, drawn) and epoch(8)[1] != drawn


def test_option_checks():
    import train_kd
    assert train_kd.parse_opt(["--unlabeled", "--epochs", "3"]).unlabeled == FROM_DATA
    assert KDConfig.from_opt(train_kd.parse_opt(["--unlabeled", "x/"])).unlabeled == "x/"
    with pytest.raises(OptionError, match="--unlabeled-ratio"):
        KDConfig(unlabeled="x", unlabeled_ratio=0)
    with pytest.raises(OptionError, match="needs a KD loss"):
        KDConfig(unlabeled="x", kd=False, feat=())
    opt = train_kd.parse_opt(["--teacher_weight", __file__, "--unlabeled", "x", "--rect"])
    with pytest.raises(OptionError, match="--rect"):
        train_kd.main(opt)


# ------------------------------------------------------------------ the pseudo-label baseline's tools
def test_stratified_labeled_split_writes_lists_and_yaml(tmp_path, semi):
    from test_data import load_script
    split = load_script("split_dataset")
    files = sorted((semi["root"] / "unl" / "images" / "train").glob("*.jpg")) + \
        sorted((semi["data"].parent / "images" / "train").glob("*.jpg"))
    d0 = check_dataset(semi["data"])
    yaml_file, n_lab, n_unl = split.split_labeled(files, tmp_path / "s", 0.25, d0["val"], d0["names"], seed=1)
    d = check_dataset(yaml_file)
    lab, unl = (Path(d[k]).read_text().split() for k in ("train", "unlabeled"))
    assert (len(lab), len(unl)) == (n_lab, n_unl) and n_lab + n_unl == 10 and 0 < n_lab < n_unl
    assert not set(lab) & set(unl) and d["val"] == d0["val"] and d["names"] == NAMES
    again = split.split_labeled(files, tmp_path / "t", 0.25, d0["val"], d0["names"], seed=1)[0]
    assert Path(check_dataset(again)["train"]).read_text().split() == lab  # seeded


def test_pseudo_labels_from_detect_output(tmp_path, semi):
    """detect.py --save-txt --save-conf on the unlabeled images -> rows kept at conf >= T, images linked, a
    YAML training on the labeled split + the pseudo-labelled images."""
    from test_data import load_script

    import detect
    from utils.dataloaders import LoadImagesAndLabels
    pseudo = load_script("pseudo_labels")
    det = detect.run(weights=semi["teacher"], source=str(semi["unl"]), imgsz=(64, 64), conf_thres=0.0, max_det=3,
                     device="cpu", save_txt=True, save_conf=True, nosave=True, project=tmp_path, name="det")
    rows = [line.split() for f in (det / "labels").glob("*.txt") for line in f.read_text().splitlines()]
    assert rows and all(len(r) == 6 for r in rows)
    confs = sorted(float(r[5]) for r in rows)
    t = confs[len(confs) // 2]
    yaml_file, n_images, n_boxes = pseudo.pseudo_label(det / "labels", str(semi["unl"]), semi["data"], tmp_path / "p",
                                                       conf=t)
    assert n_boxes == sum(c >= t for c in confs) and 0 < n_images <= 6
    d = check_dataset(yaml_file)
    ds = LoadImagesAndLabels(d["train"], 64)
    linked = [lb for f, lb in zip(ds.im_files, ds.labels) if Path(f).parent == tmp_path / "p" / "images"]
    assert len(ds) == 4 + n_images and len(linked) == n_images and 0 < sum(map(len, linked)) <= n_boxes
    with pytest.raises(UserError, match="--exist-ok"):
        pseudo.pseudo_label(det / "labels", str(semi["unl"]), semi["data"], tmp_path / "p", conf=t)
    assert pseudo.pseudo_label(det / "labels", str(semi["unl"]), semi["data"], tmp_path / "p", conf=1.01,
                               exist_ok=True)[1:] == (0, 0)
    (det / "labels" / "0.txt").write_text("0 0.5 0.5 0.2 0.2\n")  # detect.py without --save-conf
    with pytest.raises(UserError, match="--save-conf"):
        pseudo.pseudo_label(det / "labels", str(semi["unl"]), semi["data"], tmp_path / "q", conf=t)
