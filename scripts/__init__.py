"""The user guide's scripts, importable from the repository root (``from scripts.onnx_inference
import SAMURAIONNXPredictor``); importing one runs nothing."""
