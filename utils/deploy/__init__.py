"""Deployment: export to TorchScript, ONNX, OpenVINO and INT8 (OpenVINO via NNCF, ONNX via onnxruntime), the
artifacts' metadata, and loading each artifact back for inference (utils.backends, hubconf.py)."""
