"""The shipped experiment files: ``default.yaml`` (what ``depthbench run`` runs without an argument)
and the worked examples ``cifar10.yaml`` and ``imagenet.yaml``.

This folder is installed as the data package ``suite.configs`` (pyproject.toml maps it), so
``suite.run.config`` finds these files in a checkout and in an installed wheel alike.
"""
