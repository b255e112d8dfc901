"""Inference: onnxruntime sessions and the adapters that turn raw outputs into one type."""
