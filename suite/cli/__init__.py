"""The ``depthbench`` command line: ``app.py`` holds the app and the chain commands; one module
per command group (``measure``, ``methods``, ``run``, ``report``) registers the rest."""
