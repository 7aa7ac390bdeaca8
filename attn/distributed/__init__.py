"""The Ray layer, in three plain parts (it knows nothing of model internals):

- ``worker.py``: the per-worker training function that Ray Train runs on every DDP rank;
- ``driver.py``: the per-run driver that starts or joins Ray, opens the MLflow run and fits a
  ``TorchTrainer`` (a Tune trial calls the same driver);
- the sweep (Ray Tune over drivers) builds on these.
"""
