"""OpenVINO (fp32, and INT8 through NNCF post-training quantization) and ONNX INT8 (onnxruntime static QDQ)
export. openvino and nncf are optional (requirements-export.txt); a missing one is one error naming pip."""

from pathlib import Path

import yaml

from utils.cli import UserError
from utils.general import LOGGER, colorstr

EXTRA = "pip install -r requirements-export.txt"


def require(module, what):
    """Import an optional export dependency, else one clear error naming the pip command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"{what} needs the optional package '{module.split('.')[0]}': {EXTRA} "
                        f"(or pip install {module.split('.')[0]})") from e


def _save_openvino(ov, ov_model, onnx_file, folder, meta):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    xml = folder / f"{Path(onnx_file).stem}.xml"
    ov.save_model(ov_model, str(xml), compress_to_fp16=False)
    (folder / "metadata.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return folder


def export_openvino(onnx_file, meta):
    """best.onnx -> best_openvino_model/ (best.xml, best.bin, metadata.yaml), fp32."""
    ov = require("openvino", "--include openvino")
    LOGGER.info(f"{colorstr('OpenVINO:')} converting with openvino {ov.__version__}...")
    folder = Path(onnx_file).with_name(f"{Path(onnx_file).stem}_openvino_model")
    return _save_openvino(ov, ov.convert_model(str(onnx_file)), onnx_file, folder, meta)


def export_openvino_int8(onnx_file, meta, calib):
    """best.onnx -> best_int8_openvino_model/ by NNCF post-training quantization on the calibration images."""
    ov = require("openvino", "--int8 (OpenVINO)")
    nncf = require("nncf", "--int8 (OpenVINO)")
    LOGGER.info(f"{colorstr('OpenVINO INT8:')} NNCF {nncf.__version__} on {len(calib)} calibration images...")
    ov_model = ov.convert_model(str(onnx_file))
    # only the convolutions' inputs and weights: the element-wise tail (SiLU's multiply, the box decode and
    # the concat of pixel boxes with 0..1 scores into one tensor) stays float, one scale cannot serve both
    # min/max activation ranges (NNCF's default quantile ranges cost 0.025 mAP50 on NEU-DET, MINMAX 0.002)
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    ignored = nncf.IgnoredScope(types=["Multiply", "Add", "Subtract", "Power", "Sigmoid", "Concat"], validate=False)
    advanced = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    quantized = nncf.quantize(ov_model, nncf.Dataset(calib), preset=nncf.QuantizationPreset.MIXED,
                              subset_size=len(calib), ignored_scope=ignored, advanced_parameters=advanced)
    folder = Path(onnx_file).with_name(f"{Path(onnx_file).stem}_int8_openvino_model")
    return _save_openvino(ov, quantized, onnx_file, folder, meta)


class _Reader:
    """onnxruntime CalibrationDataReader over the calibration images."""

    def __init__(self, name, calib):
        self.name, self.items = name, iter(calib)

    def get_next(self):
        x = next(self.items, None)
        return None if x is None else {self.name: x}


def export_onnx_int8(onnx_file, meta_strings, calib):
    """best.onnx -> best_int8.onnx: QDQ static quantization of the convolutions (int8 per-channel weights, uint8
    activations); the element-wise decode stays float, as in the OpenVINO INT8 export."""
    import onnx

    q = require("onnxruntime.quantization", "--int8 (ONNX)")
    from utils.deploy.onnx_export import add_metadata

    out = Path(onnx_file).with_name(f"{Path(onnx_file).stem}_int8.onnx")
    pre = out.with_name(f"{out.stem}_pre.onnx")
    LOGGER.info(f"{colorstr('ONNX INT8:')} onnxruntime static QDQ on {len(calib)} calibration images...")
    q.quant_pre_process(str(onnx_file), str(pre), skip_symbolic_shape=True)
    name = onnx.load(str(pre)).graph.input[0].name
    try:
        q.quantize_static(str(pre), str(out), _Reader(name, calib), quant_format=q.QuantFormat.QDQ,
                          per_channel=True, op_types_to_quantize=["Conv"], activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                          calibrate_method=q.CalibrationMethod.MinMax)
    finally:
        pre.unlink(missing_ok=True)
    add_metadata(out, meta_strings)
    return out
