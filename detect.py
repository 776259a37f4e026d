"""Run detection on images, folders, globs, .txt lists or videos; save annotated results.

Usage:
    python detect.py --weights best.pt --source data/images --img 224
    python detect.py --weights best.onnx --source video.mp4 --save-txt --save-crop --save-csv
"""

import argparse
import csv
import sys
import time
from pathlib import Path

import cv2
import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.backends import Ensemble  # noqa: E402
from utils.boxes import scale_boxes, xyxy2xywh  # noqa: E402
from utils.cli import OptionError, add_cfg_argument  # noqa: E402
from utils.general import LOGGER, check_img_size, colorstr, increment_path  # noqa: E402
from utils.nms import non_max_suppression  # noqa: E402
from utils.options import check_classes, check_detect_options  # noqa: E402
from utils.run_dirs import OutputError, imwrite, make_dir, writing  # noqa: E402
from utils.torch_utils import Timer, select_device  # noqa: E402
from utils.plots import Annotator, colors, detections_line, save_one_box  # noqa: E402


class _VideoSink:
    """One cv2.VideoWriter per output path (mp4), reopened when the source video changes; OutputError naming
    the file when cv2 cannot open it (cv2 does not raise: its writer would drop every frame silently)."""

    def __init__(self):
        self.path, self.writer = None, None

    def write(self, path, frame, cap):
        if path != self.path:
            self.release()
            fps = cap.get(cv2.CAP_PROP_FPS) if cap is not None else 0
            h, w = frame.shape[:2]
            self.path, out = path, Path(path).with_suffix(".mp4")
            self.writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps if fps and fps > 0 else 30,
                                          (w, h))
            if not self.writer.isOpened():
                raise OutputError(out, "cv2.VideoWriter cannot open it (read-only or missing folder, full disk, "
                                       "or no mp4v encoder)")
        self.writer.write(frame)

    def release(self):
        if self.writer is not None:
            self.writer.release()
        self.path, self.writer = None, None


@torch.no_grad()
def run(weights=ROOT / "yolov5s.pt", source="data/images", data=None, imgsz=(640, 640), conf_thres=0.25,
        iou_thres=0.45, max_det=1000, device="", view_img=False, save_txt=False, save_conf=False, save_crop=False,
        save_csv=False, nosave=False, classes=None, agnostic_nms=False, augment=False, project=ROOT / "runs/detect",
        name="exp", exist_ok=False, line_thickness=3, hide_labels=False, hide_conf=False, half=False, vid_stride=1,
        cfg=None):
    """Detect objects in `source`; returns the output folder."""
    from utils.sources import LoadImages

    source = str(source)
    if source.isnumeric() or source.lower().startswith(("rtsp://", "rtmp://", "http://", "https://")):
        raise OptionError(f"--source {source}: webcam/stream input is not supported in this build "
                                  f"(use image, folder, glob, .txt list or video files)")
    save_img = not nosave and not source.endswith(".txt")
    device = select_device(device)
    weights = [weights] if isinstance(weights, (str, Path)) else list(weights)
    model = Ensemble(weights, device, half, cfg=cfg)
    stride, names, pt = model.stride, model.names, model.pt
    check_classes(classes, len(names))
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)  # once the weights and --classes are good
    make_dir(save_dir / "labels" if save_txt else save_dir)
    imgsz = [imgsz] * 2 if isinstance(imgsz, int) else list(imgsz) * (2 if len(imgsz) == 1 else 1)
    imgsz = check_img_size(imgsz, s=stride)
    dataset = LoadImages(source, img_size=tuple(imgsz), stride=stride, auto=pt, vid_stride=vid_stride)
    model.warmup((1, 3, *imgsz))

    seen, dt, sink = 0, (Timer(device), Timer(device), Timer(device)), _VideoSink()
    csv_path = save_dir / "predictions.csv"
    csv_rows = []
    for path, im, im0, cap, s in dataset:
        with dt[0]:
            im = torch.from_numpy(im).to(device)
            im = (im.half() if model.fp16 else im.float())[None] / 255
        t_inf = time.perf_counter()
        with dt[1]:
            pred = model(im, augment=augment)
        t_inf = time.perf_counter() - t_inf
        with dt[2]:
            det = non_max_suppression(pred, conf_thres, iou_thres, classes, agnostic_nms, max_det=max_det)[0]
        seen += 1
        p = Path(path)
        frame = getattr(dataset, "frame", 0)
        is_video = dataset.mode == "video"
        save_path = save_dir / p.name
        txt_path = save_dir / "labels" / (p.stem + (f"_{frame}" if is_video else ""))
        s += "%gx%g " % tuple(im.shape[2:])
        imc = im0.copy() if save_crop else im0
        annotator = Annotator(im0, line_width=line_thickness)
        if len(det):
            det[:, :4] = scale_boxes(im.shape[2:], det[:, :4], im0.shape).round()
            s += detections_line(det, names)
            gn = torch.tensor(im0.shape)[[1, 0, 1, 0]]
            txt_lines = []
            for *xyxy, conf, cls in reversed(det.tolist()):
                c = int(cls)
                label_name = names.get(c, str(c))
                csv_rows.append((p.name, label_name, f"{conf:.2f}"))
                if save_txt:
                    xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
                    line = (c, *xywh, conf) if save_conf else (c, *xywh)
                    txt_lines.append(" ".join(f"{v:g}" for v in line) + "\n")
                if save_img or save_crop or view_img:
                    label = None if hide_labels else (label_name if hide_conf else f"{label_name} {conf:.2f}")
                    annotator.box_label(xyxy, label or "", color=colors(c, True))
                if save_crop:
                    save_one_box(xyxy, imc, save_dir / "crops" / label_name / f"{p.stem}.jpg")
            if txt_lines:
                with writing(f"{txt_path}.txt"), open(f"{txt_path}.txt", "a") as f:
                    f.writelines(txt_lines)
        im0 = annotator.result()
        if view_img:
            cv2.imshow(str(p), im0)
            cv2.waitKey(1)
        if save_img:
            if is_video:
                sink.write(str(save_path), im0, cap)
            else:
                imwrite(save_path, im0)
        LOGGER.info(f"{s}{'' if len(det) else '(no detections), '}{t_inf * 1e3:.1f}ms")
    sink.release()
    if save_csv:
        with writing(csv_path), open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("Image Name", "Prediction", "Confidence"))
            w.writerows(csv_rows)

    t = tuple(x.t / max(seen, 1) * 1e3 for x in dt)
    LOGGER.info(f"Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape {(1, 3, *imgsz)}" % t)
    if save_txt or save_img or save_csv:
        n = len(list(save_dir.glob("labels/*.txt")))
        LOGGER.info(f"Results saved to {colorstr('bold', save_dir)}" +
                    (f"\n{n} labels saved to {save_dir / 'labels'}" if save_txt else ""))
    return save_dir


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description="YOLOv5 detection on images and videos")
    p.add_argument("--weights", nargs="+", type=str, default=[str(ROOT / "yolov5s.pt")], help="model path(s)")
    add_cfg_argument(p)
    p.add_argument("--source", type=str, default=str(ROOT / "data/images"), help="file/dir/glob/.txt list/video")
    p.add_argument("--data", type=str, default=None, help="(optional) dataset.yaml path, unused: names come "
                                                           "from the weights")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="inference size h,w")
    p.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--view-img", action="store_true", help="show results")
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-crop", action="store_true", help="save cropped prediction boxes")
    p.add_argument("--save-csv", action="store_true", help="save results in CSV format")
    p.add_argument("--nosave", action="store_true", help="do not save images/videos")
    p.add_argument("--classes", nargs="+", type=int, help="filter by class: --classes 0, or --classes 0 2 3")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--augment", action="store_true", help="augmented inference")
    p.add_argument("--project", default=str(ROOT / "runs/detect"), help="save results to project/name")
    p.add_argument("--name", default="exp", help="save results to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--line-thickness", default=3, type=int, help="bounding box thickness (pixels)")
    p.add_argument("--hide-labels", default=False, action="store_true", help="hide labels")
    p.add_argument("--hide-conf", default=False, action="store_true", help="hide confidences")
    p.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA only)")
    p.add_argument("--vid-stride", type=int, default=1, help="video frame-rate stride")
    opt = p.parse_args(argv)
    opt.imgsz *= 2 if len(opt.imgsz) == 1 else 1
    return opt


def main(opt):
    check_detect_options(opt)
    return run(**vars(opt))


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, parse_opt, "detect.py", echo="detect")
