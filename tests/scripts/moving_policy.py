"""Shared by the test scripts that train a real CaT-RL policy and then check the anchor is still pi_0
(vllm_colocate.py, fsdp2_cat.py, fsdp2_vllm.py): fixed synthesis groups, fixed texts for log-prob checks, and a
trainer whose policy really moves away from pi_0 in a step or two (a dense reward beside CaT's)."""

from __future__ import annotations

GROUPS = [
    ["Tom has 3 + 4 = 7 apples. The answer is \\boxed{7}.", "3 + 4 = 8, so \\boxed{8}.",
     "He has 7 apples. \\boxed{7}", "The total is \\boxed{7}."],
    ["12 / 3 = 4 cookies each. \\boxed{4}", "Each gets \\boxed{3}.", "\\boxed{4}", "4 cookies. \\boxed{4}"],
    ["5 * 6 = 30 pencils. \\boxed{30}", "\\boxed{11}", "30 in total: \\boxed{30}", "She has \\boxed{30} pencils."],
    ["20 - 8 = 12 birds remain. \\boxed{12}", "\\boxed{12}", "There are 28 birds. \\boxed{28}", "\\boxed{12}"],
    ["The train travels 60 * 2 = 120 km. \\boxed{120}", "\\boxed{62}", "120 km. \\boxed{120}", "\\boxed{120}"],
    ["9 + 9 + 9 = 27 marbles. \\boxed{27}", "\\boxed{18}", "\\boxed{27}", "27 marbles: \\boxed{27}"],
    ["Half of 50 is 25. \\boxed{25}", "\\boxed{25}", "50 / 2 = 20. \\boxed{20}", "\\boxed{25}"],
    ["15 + 10 = 25 pencils. \\boxed{25}", "\\boxed{25}", "\\boxed{35}", "Lucas has \\boxed{25} pencils."],
]
TEXTS = ["The capital of France is Paris.", "Two plus two equals four.", "Lucas has 15 pencils and buys 10 more."]


def length_reward(completions, **kwargs):
    """A dense reward beside CaT's (whose references a small or random-weight model rarely parses), so advantages are
    non-zero and the policy moves away from pi_0 in a few steps."""
    return [len(c[0]["content"] if isinstance(c, list) else c) / 100.0 for c in completions]


def build_trainer(model: str, args, *, peft: bool, problems: int = 32):
    """`CaTGRPOTrainer` on built-in word problems with CaT's math reward + `length_reward`; LoRA when `peft`."""
    from cat_trl.data import load_synthetic_math
    from cat_trl.rewards import CaTMathReward
    from cat_trl.trainer import CaTGRPOTrainer

    peft_config = None
    if peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    data = load_synthetic_math(problems, seed=0, instruction="Put your final answer within \\boxed{}.")
    return CaTGRPOTrainer(model, reward_funcs=[CaTMathReward("string"), length_reward], args=args,
                          train_dataset=data, peft_config=peft_config)
