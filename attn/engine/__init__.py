"""The training engine: one epoch loop for every task, metrics, checkpoints. No Ray, no MLflow."""
