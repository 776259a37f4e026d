"""Utilities for yolov5-kd: one concern per module."""
