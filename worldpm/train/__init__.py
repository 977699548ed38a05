"""`worldpm train`: the recipe (recipe.py, the loop read top to bottom), the optimisation engine (DeepSpeed ZeRO or plain
PyTorch), checkpointing and preemption, the distributed job, and the metrics log. `python -m worldpm.train` runs the recipe on
every rank of a launcher. Imports nothing from eval or serve.
"""
