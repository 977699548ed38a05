"""scripts/plan_memory.py's LoRA arithmetic against the real thing: the adapter count equals the parameters peft injects into
the tiny model, and the model states follow the ZeRO stage and the quantisation as documented."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import plan_memory  # noqa: E402

from tests.conftest import make_tiny, tiny_arch  # noqa: E402


@pytest.mark.parametrize("r", [1, 4, 16])
def test_adapter_count_matches_peft(r):
    from worldpm.model.lora import apply_lora, lora_settings

    counts = apply_lora(make_tiny(), lora_settings({"enabled": True, "r": r}))
    assert plan_memory.lora_params(tiny_arch(), r) == counts["adapter_params"]


def test_lora_model_states_by_zero_stage_and_quantisation():
    total, head, adapters, gpus = 72_000_000_000, 8192 * 8192 + 2 * 8192 + 1, 200_000_000, 8
    zero3 = plan_memory.lora_state_bytes(total, head, adapters, 3, gpus, "none")
    zero2 = plan_memory.lora_state_bytes(total, head, adapters, 2, gpus, "none")
    assert zero3 == int((total - head) * 2 / gpus + 16 * (adapters + head) / gpus)   # everything partitioned
    assert zero2 == int((total - head) * 2 + 2 * (adapters + head) + 14 * (adapters + head) / gpus)  # weights replicated
    four = plan_memory.lora_state_bytes(total, head, adapters, 0, 1, "4bit")
    assert four == int((total - head) * 0.5 * 1.03 + 16 * (adapters + head))
    row = plan_memory.plan("qwen2.5-72b", zero=3, gpus_per_node=8, nodes=1, lora_r=16)
    full = plan_memory.plan("qwen2.5-72b", zero=3, gpus_per_node=8, nodes=1)
    assert row["method"] == "LoRA r=16" and row["model_states_gb"] < full["model_states_gb"] / 5
    assert row["activations_gb"] == full["activations_gb"]
