"""The shipped hardware profiles, one ``<name>.yaml`` each (see docs/measurement.md).

This folder is installed as the data package ``suite.hardware_profiles`` (pyproject.toml maps it),
so ``suite.measure.profiles`` finds these files in a checkout and in an installed wheel alike.
"""
