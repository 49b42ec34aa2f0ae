"""Experiment tracking in MLflow, opt-in (`tracking.mlflow_uri`): one MLflow run per flow run, nested runs for
compare variants and sweep trials, the promoted adapter registered in MLflow's model registry.

    smoltune run --config configs/smoke.yaml --set tracking.mlflow_uri=http://127.0.0.1:5000

`content` builds what a run holds from the stage records (pure); `mlflow_runs` sends it (MLflow imported there,
inside the functions). The Prefect task that calls them is tasks/track.py.
"""
