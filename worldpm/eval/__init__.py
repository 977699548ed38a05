"""Evaluation: benchmark files -> items (a prompt, its responses, which beats which) -> one scoring pass per benchmark with the
shared reward reader -> per-subtask accuracy and BT loss with bootstrap CIs, official aggregates, categories, style control;
and the scaling analysis (`worldpm scaling`) on top of many such results.

`worldpm eval` is `worldpm.eval.run`. Evaluation never imports the trainer; the trainer may call `run.evaluate_model`.
"""
