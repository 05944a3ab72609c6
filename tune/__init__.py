"""Hyperparameter search over params.yaml with Optuna, every trial's folds run as DVC experiments:
`python -m tune --trials N [--folds K]` in the project's root (docs/tuning.md)."""
