"""What each command of ``run.py`` does (``attn.cli`` parses them and turns errors into one line):
``train`` (one run or a sweep), ``evaluate`` (eval), ``show``, ``curves``, ``prepare``,
``init_experiment`` and ``config``; ``store`` resolves the ``--tracking-uri`` of those that read runs.
"""
