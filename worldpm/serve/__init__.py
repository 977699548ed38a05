"""Rewards for RLHF pipelines: `worldpm score` (score.py, batch scoring of files), `worldpm serve` (server.py, the HTTP reward
server), scorers in this process or against a server (scorers.py, client.py), the request batcher that lets concurrent callers
share forwards (batcher.py), and reward functions for TRL and OpenRLHF (reward_funcs.py). Imports nothing from train or eval.
"""
