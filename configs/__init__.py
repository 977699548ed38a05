# Marks the Hydra config tree as the package `worldpm.configs` in an installed copy (see setup.py).
