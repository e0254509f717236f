"""samurai-onnx compiler: SAM 2.1 checkpoints -> verified ONNX graphs -> versioned bundles.

Needs the ``export`` extra (torch, onnx, onnxsim; onnxconverter-common is listed by the design but the fp16 pass uses ONNX Runtime's converter, see passes/fp16.py).
"""

__version__ = "0.1.0"
