"""The checking tools: SAMURAI's PyTorch code as the oracle, parity validation, benchmarks and
dataset evaluation. They need both the oracle (or torch) and the runtime, so they sit apart
from building (``samurai_onnx.compiler``) and running (``samurai_onnx.runtime``).
"""
