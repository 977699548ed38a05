"""worldpm: human-preference (reward) models at scale from public forum data.

`from worldpm import RewardModel` is the Python API (see worldpm.reward_model); importing the package itself stays light so the
CLI starts fast.
"""
__version__ = "0.1.0"
__all__ = ["RewardModel", "RewardSpec", "UserError"]


def __getattr__(name):
    if name in ("RewardModel", "RewardSpec"):
        from worldpm import reward_model

        return getattr(reward_model, name)
    if name == "UserError":
        from worldpm.errors import UserError

        return UserError
    raise AttributeError(f"module 'worldpm' has no attribute {name!r}")
