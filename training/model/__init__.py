"""One trained network: the recipe, the networks, fitting, out-of-fold models, ONNX export and inference, metrics."""
