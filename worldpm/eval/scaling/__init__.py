"""`worldpm scaling`: scaling points gathered from eval results (points.py), power-law and saturating fits with bootstrap
intervals (power_law.py), plots (plots.py) and the verb (run.py)."""
