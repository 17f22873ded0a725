"""Compression beside AxFormer (DESIGN §5, §6): knowledge distillation (distill), 8-bit quantization in PyTorch /
bitsandbytes (quantize), ONNX export and int8 quantization of the exported graph (export) and the ONNX Runtime /
OpenVINO runtimes that run it as a drop-in model (runtimes).

May import: surgery, training, taskdata, encoders, axformer.utils, axformer.device.
"""
