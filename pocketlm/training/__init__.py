"""Training: the pretraining loop, the classifier trainer (AWP), callbacks and metrics."""
