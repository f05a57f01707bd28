"""Deployment: every model vitprune builds as an ONNX file checked against PyTorch (`export`:
logits, predictions and token choices on real images, int8 copies), and onnxruntime timed against
PyTorch (`runtime_bench`). Above vitprune.models and vitprune.methods: it exports any registered
method."""
