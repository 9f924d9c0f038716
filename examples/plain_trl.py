"""CaT rewards with vanilla TRL: no cat-trl trainer, just a reward function.

    python examples/plain_trl.py                      # embedded SmolLM2-135M-Instruct, CPU, 2 steps
    python examples/plain_trl.py --model <path> --max_steps 10

`CaTSynthesisMathReward` forms whole groups of G itself (gathering across processes when launched with
`accelerate launch`), asks a frozen copy of the initial model (the anchor) to synthesize one reference per group
from the G completions, and scores each completion's final \\boxed{} answer against it. The same callable works
with `trl grpo --reward_funcs cat_trl.rewards.cat_synthesis_math_reward` (configured through CAT_* environment
variables, see its docstring).
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from cat_trl.data import load_synthetic_math  # noqa: E402
from cat_trl.embedded_model import resolve_model_path  # noqa: E402
from cat_trl.rewards import CaTSynthesisMathReward  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max_steps", type=int, default=2)
    parser.add_argument("--output_dir", default="outputs/plain-trl")
    cli = parser.parse_args()

    model = resolve_model_path(cli.model)  # the alias becomes a local checkpoint; hub ids pass through
    G = 4
    reward = CaTSynthesisMathReward(num_generations=G, anchor_model=model, anchor_max_new_tokens=64)
    args = GRPOConfig(
        output_dir=cli.output_dir,
        num_generations=G,  # must equal the reward's num_generations
        per_device_train_batch_size=8,
        max_completion_length=48,
        max_steps=cli.max_steps,
        logging_steps=1,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        activation_checkpointing=False,
        report_to=[],
        save_strategy="no",
        log_completions=True,
    )
    dataset = load_synthetic_math(16, seed=0, max_steps=1)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset)
    trainer.train()
    rewards = [h.get("rewards/cat_synthesis_math_reward/mean") for h in trainer.state.log_history if "loss" in h]
    print("CaT reward per step:", rewards)


if __name__ == "__main__":
    main()
