"""worldpm: human-preference (reward) models at scale from public forum data.

`from worldpm import RewardModel` is the Python API (worldpm.model); importing the package itself stays light so the CLI starts
fast. The layout follows the data flow: model/ (the reward reader everything shares), data/ (pairs -> micro-batches), train/,
eval/, serve/; data_prep (a package of its own) collects the pairs.
"""
__version__ = "0.1.0"
__all__ = ["RewardModel", "RewardSpec", "UserError"]


def __getattr__(name):
    if name in ("RewardModel", "RewardSpec"):
        from worldpm import model

        return getattr(model, name)
    if name == "UserError":
        from worldpm.errors import UserError

        return UserError
    raise AttributeError(f"module 'worldpm' has no attribute {name!r}")
