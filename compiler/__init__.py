"""samurai-onnx compiler: SAM 2.1 checkpoints -> verified ONNX graphs -> versioned bundles.

Needs the ``export`` extra (torch, onnx, onnxsim, onnxconverter-common).
"""

__version__ = "0.1.0"
