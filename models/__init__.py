"""Model definitions: YOLOv5 blocks, attention blocks, MobileNetV3 blocks, the YAML parser."""
