# `python -m worldpm.train ...`: what torchrun, `deepspeed --no_local_rank`, srun and submitit start on every rank; the same
# entry as `worldpm train ...` (the config is checked before the recipe, and torch, are imported).
from worldpm.config import verb_entry

verb_entry("train", "worldpm.train.recipe:run")()
