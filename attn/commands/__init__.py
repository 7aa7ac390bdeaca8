"""What the commands of ``run.py`` do beyond training (``attn.cli`` parses them):

- :mod:`attn.commands.evaluate`: ``run.py eval SOURCE``, score trained weights and record it in MLflow;
- :mod:`attn.commands.show`: ``run.py show RUN_ID``, fetch a run's pictures and summary.
"""
