import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest  # noqa: E402

TINY_ARCH = None


def tiny_arch() -> dict:
    """The `model=tiny` architecture, read from its config (one source of truth)."""
    from omegaconf import OmegaConf

    from worldpm.config import compose

    global TINY_ARCH
    if TINY_ARCH is None:
        TINY_ARCH = OmegaConf.to_container(compose("score", ["input=x"]).model.arch, resolve=True)
    return dict(TINY_ARCH)


def make_tiny(head: str = "mlp", head_std: float = 0.2, seed: int = 0, **spec):
    """A tiny random reward model whose head is scaled up so rewards differ by O(1) between texts (tolerances then bite)."""
    import torch

    from worldpm.model.reward_model import RewardModel, init_head
    from worldpm.model.tokenizer import load_tokenizer

    rm = RewardModel.from_config(tiny_arch(), load_tokenizer("tiny"), head=head, seed=seed, **spec)
    torch.manual_seed(seed + 1)
    init_head(rm.head, head_std)
    return rm.eval()


@pytest.fixture(scope="session")
def tiny_rm():
    """One `make_tiny()` for the whole session: tests only read it (score, encode, save); never train, move or edit it."""
    return make_tiny()


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_rm, tmp_path_factory):
    """`tiny_rm` saved as a checkpoint directory (its path, a str), for code that loads a model from disk."""
    return str(tiny_rm.save_pretrained(tmp_path_factory.mktemp("tiny_ckpt") / "tiny"))


def conversations(n: int = 6):
    """Mixed lengths, a multi-turn one, and one with its own system message."""
    out = []
    for i in range(n):
        out.append([{"role": "user", "content": f"Question {i}: how do I sort a list in Python? " * (1 + 3 * i)},
                    {"role": "assistant", "content": "Use `sorted(xs)` or `xs.sort()`. " * (1 + (5 * i) % 7)}])
    out.append([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! How can I help?"}])
    out.append([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "5"},
                {"role": "user", "content": "Are you sure?"}, {"role": "assistant", "content": "Sorry: it is 4."}])
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for modules that time or train: on a shared 2-core machine, OpenMP threads spinning against other
    jobs make runs 5x slower. Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
