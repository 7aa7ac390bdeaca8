"""The Ray layer (the only package that imports Ray; it knows nothing of model internals):

- ``lifecycle.py``: one run's life for single runs, sweeps and evaluations: plan, Ray session, close;
- ``worker.py``: the per-worker training function that Ray Train runs on every DDP rank;
- ``driver.py``: the per-run driver that fits a ``TorchTrainer`` (a Tune trial uses its trainer too);
- ``sweep.py`` and ``trial.py``: Ray Tune with Optuna and ASHA over trials, each a Ray Train run.
"""
