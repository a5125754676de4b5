"""PyTorch models, training, evaluation and the model registry."""
