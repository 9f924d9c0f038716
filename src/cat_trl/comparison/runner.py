"""A learning comparison: several arms trained from the same initial model, data order, seed, steps and generation
budget, all scored on one held-out split at the same steps.

Arms:
    none                 the initial model (scored once; it is every arm's step 0)
    cat                  CaT-RL: GRPO, reward against the anchor's synthesized reference
    majority             TTRL-style: reward against the majority answer of the group
    self_bon, min_ppl, mutual_predictability   reward against the anchor's selected rollout
    gold                 ORACLE: GRPO against the true labels (plain `GRPOTrainer`; the only arm where labels reach
                         a reward)
    cat_sft              the paper's SFT baseline: pi_0 rollouts -> pi_0 synthesis -> `SFTTrainer` with LoRA, early
                         stopping on the lowest validation loss

Every RL arm is built from the same recipe with only `cat_estimator` (and `output_dir`) overridden, so everything
else -- seed, sampler order, G, lengths, learning rate, steps -- is identical by construction.
"""

from __future__ import annotations

import gc
import glob
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..answers import AnswerMatcher, get_extractor
from .heldout import HeldOutEvalCallback, HeldOutEvaluator, HeldOutSettings, split_heldout

logger = logging.getLogger(__name__)

RL_ARMS = {"cat": "synthesis", "majority": "majority", "self_bon": "self_bon", "min_ppl": "min_ppl",
           "mutual_predictability": "mutual_predictability"}
ARMS = ("none", *RL_ARMS, "gold", "cat_sft")
#: training diagnostics carried into the results (means over the run's logging steps)
#: settings that differ between reruns of one configuration without changing it
VOLATILE = ("output_dir", "logging_dir", "hub_token")
DIAGNOSTICS = ("reward", "cat/label_accuracy", "cat/reward_accuracy", "cat/reference_parse_failure",
               "cat/reference_ne_majority", "cat/reference_format_failure", "cat/ground_truth_ratio")


@dataclass
class CompareArguments:
    """What `cat-trl compare` adds to a training recipe: the arms, the held-out split and how it is scored, and the
    CaT-SFT baseline's settings."""

    arms: list[str] = field(default_factory=lambda: ["none", "cat", "majority", "gold"],
                            metadata={"help": f"Arms to run, from {', '.join(ARMS)}."})
    heldout_size: int = field(default=200, metadata={"help": "Problems held out (seeded); never trained on."})
    heldout_seed: int = field(default=0, metadata={"help": "Seed of the held-out split."})
    heldout_every: int = field(default=5, metadata={"help": "Score the held-out split every this many steps."})
    heldout_k: int = field(default=4, metadata={"help": "Samples per problem for pass@1 (0: greedy only)."})
    heldout_max_new_tokens: int = field(default=256, metadata={"help": "Output tokens of held-out answers."})
    heldout_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of pass@1."})
    heldout_batch_size: int | None = field(default=None, metadata={"help": "Sequences per evaluation micro-batch."})
    heldout_engine: str = field(default="auto", metadata={
        "help": "What decodes the held-out answers. `vllm`: the policy in TRL's colocated vLLM engine (needs use_vllm: "
                "true, vllm_mode: colocate; synced before each point, step 0 included: no second engine); "
                "`transformers`: the policy model itself; `auto`: vllm when the recipe colocates vLLM, else "
                "transformers.", "choices": ["auto", "vllm", "transformers"]})
    sft_learning_rate: float = field(default=5e-5, metadata={"help": "CaT-SFT learning rate (paper: 5e-5)."})
    sft_lora_r: int = field(default=32, metadata={"help": "CaT-SFT LoRA rank (paper: 32)."})
    sft_batch_size: int = field(default=32, metadata={"help": "CaT-SFT effective batch size (paper: 32)."})
    sft_epochs: float = field(default=3.0, metadata={"help": "CaT-SFT epochs (early stopping may end it sooner)."})
    sft_validation_size: int = field(default=32, metadata={
        "help": "CaT-SFT validation questions, set aside from every arm's training pool (pi_0 references on them; "
                "early stopping on their loss)."})
    seeds: list[int] | None = field(default=None, metadata={
        "help": "Training seeds: every arm runs once per seed on the same held-out problems (default: the recipe's "
                "seed). The report gives each seed and the mean with its spread."})
    ood_size: int = field(default=0, metadata={
        "help": "Out-of-distribution held-out problems (synthetic_math only): problems with more operations than any "
                "training problem has, scored at every point beside the seeded split. 0: none."})
    sft_patience: int = field(default=2, metadata={"help": "Evaluations without a lower validation loss before "
                                                           "CaT-SFT stops."})

    def __post_init__(self):
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ValueError(f"arms {unknown or self.arms}: choose from {', '.join(ARMS)}")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms lists an arm twice: {self.arms}")
        for name in ("heldout_size", "heldout_every", "heldout_max_new_tokens", "sft_lora_r", "sft_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.heldout_engine not in ("auto", "vllm", "transformers"):
            raise ValueError(f"heldout_engine must be auto, vllm or transformers, got {self.heldout_engine!r}")
        if self.heldout_k < 0:
            raise ValueError(f"heldout_k must be >= 0, got {self.heldout_k}")
        if self.sft_validation_size < 2:
            raise ValueError(f"sft_validation_size must be >= 2, got {self.sft_validation_size}")
        if self.ood_size < 0:
            raise ValueError(f"ood_size must be >= 0, got {self.ood_size}")
        if self.seeds is not None:
            if not self.seeds or len(set(self.seeds)) != len(self.seeds):
                raise ValueError(f"seeds must list distinct integers, got {self.seeds}")
            self.seeds = [int(x) for x in self.seeds]


def eval_steps(max_steps: int, every: int) -> list[int]:
    """Held-out points: every `every` steps and the last step (step 0 is the initial model, scored once)."""
    steps = list(range(every, max_steps + 1, every))
    return steps if steps and steps[-1] == max_steps else [*steps, max_steps]


def config_digest(config: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def experiment_digest(config: dict) -> str:
    """What pieces of one comparison share: the comparison settings but `seeds` and `arms`, and the recipe every arm is
    built from (its training settings but the per-arm and per-seed ones, its data and model settings)."""
    compare = {k: v for k, v in config["compare"].items() if k not in ("seeds", "arms")}
    arm = next(iter(config["arms"].values()))
    recipe = {"training": {k: v for k, v in arm["training"].items() if k not in ("seed", "cat_estimator")},
              "data": arm["data"], "model": arm["model"]}
    return config_digest({"compare": compare, "recipe": recipe})


def merge_pieces(previous: dict, new: dict) -> dict:
    """`new` results added to a `previous` piece of the same experiment: runs merged by seed, arms by name (the
    newer run of an arm wins), configurations unioned, and every piece's provenance kept in `pieces` -- all of
    `new`'s pieces when it is itself a merge (a directory that several pieces ran into)."""
    runs = {k: {**v, "arms": dict(v["arms"])} for k, v in previous.get("runs", {}).items()}
    for key, run in new["runs"].items():
        if key in runs:
            runs[key]["arms"].update(run["arms"])
        else:
            runs[key] = run
    config = {"compare": new["config"]["compare"],
              "arms": {**previous.get("config", {}).get("arms", {}), **new["config"]["arms"]}}
    def pieces_of(result: dict) -> list[dict]:
        return result.get("pieces") or [{k: result.get(k) for k in ("provenance", "wall_seconds", "settings")}]

    return {**new, "runs": dict(sorted(runs.items())), "config": config, "config_sha256": config_digest(config),
            "pieces": [*pieces_of(previous), *pieces_of(new)]}


def merge_directories(sources: list[str], target: str) -> dict:
    """Pieces of one experiment run side by side into separate output directories (e.g. one seed per machine, or two
    processes on one), merged into `target` (which may be one of `sources`): `compare_results.json` by
    `merge_pieces`, each piece's provenance kept once, the per-arm run directories copied. Pieces must share
    `experiment_sha256` (the stored digests are compared: pieces made by another revision of the code merge when
    their settings are the same). Returns the merged results; the caller writes the reports."""
    loaded = []
    for source in sources:
        path = os.path.join(source, "compare_results.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no compare results to merge")
        with open(path) as f:
            loaded.append(json.load(f))
    digests = {r.get("experiment_sha256") for r in loaded}
    if len(digests) != 1 or None in digests:
        raise ValueError(f"{', '.join(sources)} hold results of different configurations (experiment_sha256 "
                         f"{sorted(str(d)[:12] for d in digests)}); only pieces of one experiment merge")
    merged = loaded[0]
    for result in loaded[1:]:
        merged = merge_pieces(merged, result)
    seen, pieces = set(), []
    for piece in merged["pieces"]:
        key = json.dumps(piece.get("provenance"), sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            pieces.append(piece)
    merged["pieces"] = pieces
    merged["wall_seconds"] = sum(p.get("wall_seconds") or 0.0 for p in pieces)
    os.makedirs(target, exist_ok=True)
    for source in sources:
        if os.path.abspath(source) == os.path.abspath(target):
            continue
        for name in os.listdir(source):
            src = os.path.join(source, name)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(target, name), dirs_exist_ok=True)
            elif name == "heldout.jsonl":
                shutil.copyfile(src, os.path.join(target, name))
    with open(os.path.join(target, "compare_results.json"), "w") as f:
        json.dump(merged, f, indent=1, default=str)
    return merged


def _question_key(row: dict[str, Any]) -> str:
    from ..messages import question_text

    return " ".join(str(row.get("question") or question_text(row["prompt"])).split()).lower()


def _rows(dataset) -> list[dict[str, Any]]:
    return [dict(r) for r in dataset]


def _diagnostics(log_history: list[dict]) -> dict[str, float]:
    out = {}
    for key in DIAGNOSTICS:
        values = [h[key] for h in log_history if isinstance(h.get(key), (int, float)) and not math.isnan(h[key])]
        if values:
            out[key] = sum(values) / len(values)
    return out


def trained_questions(trainer, args) -> list[str]:
    """The questions an RL arm trains on, in the order it sees them, read from the trainer's own training
    dataloader (TRL's seeded `RepeatSampler`; every rank's slice of every generation batch, gathered in rank order):
    the batches its `max_steps` optimizer steps consume, each question once. CaT-SFT trains on exactly these."""
    from ..distributed import gather_all

    batches = max(1, args.max_steps * args.gradient_accumulation_steps)
    keys: list[str] = []
    loader, seen = trainer.get_train_dataloader(), 0
    while seen < batches:  # past one epoch the same sampler goes on (reshuffled), as in training
        for batch in loader:
            if seen >= batches:
                break
            keys.extend(gather_all([_question_key(row) for row in batch]))
            seen += 1
    return list(dict.fromkeys(keys))


class Comparison:
    """Runs the arms one after the other in this process and collects `results` (see `run`).

    Args:
        compare_args: the arms and the held-out settings.
        arm_args: `arm_args(arm)` -> (script_args, CaTGRPOConfig, ModelConfig) for an RL arm: the shared recipe with
            `cat_estimator` and `output_dir` set for that arm (parsed afresh so TRL's own config checks run per arm).
        output_dir: where results, reports and per-arm runs go.
    """

    def __init__(self, compare_args: CompareArguments, arm_args, output_dir: str):
        self.compare_args, self._arm_args, self.output_dir = compare_args, arm_args, output_dir
        #: the training seed being run (None: the recipe's own, one seed)
        self.seed: int | None = None

    def arm_args(self, arm: str):
        """(script_args, CaTGRPOConfig, ModelConfig) of `arm` for the seed being run."""
        return self._arm_args(arm) if self.seed is None else self._arm_args(arm, self.seed)

    def seeds(self) -> list[int | None]:
        return [None] if not self.compare_args.seeds else list(self.compare_args.seeds)

    def configuration(self) -> dict:
        """Every setting of every arm (resolved, prompts included) for every seed: what `compare_results.json` stores
        and what a rerun into the same directory must match."""
        import dataclasses

        arms, saved = {}, self.seed
        try:
            for seed in self.seeds():
                self.seed = seed
                for arm in self.compare_args.arms:
                    script_args, args, model_args = self.arm_args(arm)
                    arms[f"{arm}" if seed is None else f"seed-{seed}/{arm}"] = {
                        "training": {k: v for k, v in args.to_dict().items() if k not in VOLATILE},
                        "data": dataclasses.asdict(script_args), "model": dataclasses.asdict(model_args)}
        finally:
            self.seed = saved
        return {"compare": asdict(self.compare_args), "arms": arms}

    # ------------------------------------------------------------------ data

    def prepare(self):
        from ..data import load_train_dataset

        script_args, args, _ = self.arm_args("none")
        rows = _rows(load_train_dataset(script_args))
        if not all(r.get("gold_answer") not in (None, "") for r in rows):
            raise ValueError("cat-trl compare scores held-out accuracy against gold answers: every problem needs one "
                             "(`gold_answer`; dataset_gold_column for generic data)")
        self.check_output_dir()
        self.train_rows, self.heldout_rows = split_heldout(rows, self.compare_args.heldout_size,
                                                           self.compare_args.heldout_seed)
        for row in self.heldout_rows:
            row["split"] = "in"
        # Set aside from every arm's training pool alike, whether this piece runs cat_sft or not: every piece of one
        # experiment trains on the same pool.
        size = self.compare_args.sft_validation_size
        if len(self.train_rows) <= size + 1:
            raise ValueError(f"sft_validation_size={size} leaves no training problems ({len(self.train_rows)})")
        order = list(range(len(self.train_rows)))
        random.Random(self.compare_args.heldout_seed + 1).shuffle(order)
        self.sft_validation_rows = [self.train_rows[i] for i in sorted(order[:size])]
        self.train_rows = [self.train_rows[i] for i in sorted(order[size:])]
        if ("cat_sft" in self.compare_args.arms and not set(self.compare_args.arms) & {*RL_ARMS, "gold"}
                and not self._earlier_trained_questions()):
            raise ValueError("cat_sft trains on the questions the RL arms train on: list an RL arm (e.g. cat) with "
                             "it, or run it as a piece into an output_dir where an RL arm of the same seeds ran")
        if self.compare_args.ood_size:
            self.heldout_rows += self._ood_rows(script_args, rows)
        prompts_per_batch = args.generation_batch_size // args.num_generations
        needed = prompts_per_batch * max(args.max_steps, 1) // max(args.steps_per_generation or 1, 1)
        if len(self.train_rows) < prompts_per_batch:
            raise ValueError(f"{len(self.train_rows)} training problems after holding out {len(self.heldout_rows)}; one "
                             f"generation batch needs {prompts_per_batch}")
        self.steps = eval_steps(args.max_steps, self.compare_args.heldout_every)
        colocated = bool(args.use_vllm) and args.vllm_mode == "colocate"
        if self.compare_args.heldout_engine == "vllm" and not colocated:
            raise ValueError("heldout_engine: vllm scores the policy in TRL's colocated vLLM engine: the recipe needs "
                             "use_vllm: true and vllm_mode: colocate (or set heldout_engine: transformers)")
        #: held-out points decoded by the policy in TRL's colocated vLLM engine (else by the policy model itself)
        self.heldout_in_vllm = colocated and self.compare_args.heldout_engine != "transformers"
        self.matcher = AnswerMatcher(args.cat_match, args.cat_match_timeout)
        self.extract = get_extractor(args.cat_answer_extraction)
        self.evaluator = HeldOutEvaluator(self.heldout_rows, self.matcher, self.extract, HeldOutSettings(
            k=self.compare_args.heldout_k, max_new_tokens=self.compare_args.heldout_max_new_tokens,
            temperature=self.compare_args.heldout_temperature, top_p=args.top_p, seed=args.seed,
            chat_template_kwargs=args.chat_template_kwargs))
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, "heldout.jsonl"), "w") as f:
            f.writelines(json.dumps({"question": r.get("question"), "gold_answer": r["gold_answer"],
                                     "split": r["split"]}) + "\n" for r in self.heldout_rows)
        logger.info("compare: %d training problems (~%d used by %d steps), %d held out, points %s",
                    len(self.train_rows), min(needed, len(self.train_rows)), args.max_steps, len(self.heldout_rows),
                    self.steps)

    def _ood_rows(self, script_args, train_rows: list[dict]) -> list[dict]:
        """`ood_size` held-out problems whose structure never occurs in training: built-in word problems with more
        operations (3) than any training problem (`synthetic_max_steps`), from another seed."""
        import dataclasses

        from ..data import load_train_dataset

        if script_args.dataset_name != "synthetic_math":
            raise ValueError("ood_size needs dataset_name: synthetic_math (the generator builds problems with more "
                             "operations than training has); set ood_size: 0 for other data")
        if script_args.synthetic_max_steps >= 3:
            raise ValueError("ood_size: training already has 3-operation problems (synthetic_max_steps: 3); train with "
                             "synthetic_max_steps 1 or 2 to hold out longer chains")
        ood_args = dataclasses.replace(script_args, synthetic_num_problems=self.compare_args.ood_size,
                                       synthetic_max_steps=3, synthetic_min_steps=3,
                                       synthetic_seed=script_args.synthetic_seed + 1_000_003)
        ood = _rows(load_train_dataset(ood_args))
        trained = {_question_key(r) for r in train_rows}
        return [{**r, "split": "ood"} for r in ood if _question_key(r) not in trained]

    def check_output_dir(self) -> None:
        """Results already in `output_dir` must come from the same experiment: the same recipe and comparison settings,
        whatever `seeds` and `arms` each piece ran. A long comparison can so be run in pieces (a seed or a few arms per
        session) that `run` merges into one `compare_results.json`; a different configuration is refused, never mixed
        in or overwritten."""
        path = os.path.join(self.output_dir, "compare_results.json")
        self.config = self.configuration()
        self.config_sha256 = config_digest(self.config)
        self.experiment_sha256 = experiment_digest(self.config)
        self.previous = None
        if not os.path.isfile(path):
            return
        try:
            with open(path) as f:
                previous = json.load(f)
        except (OSError, ValueError):
            previous = {}
        if previous.get("experiment_sha256") != self.experiment_sha256:
            raise ValueError(f"output_dir {self.output_dir} already holds compare results of a different "
                             "configuration; choose a new output_dir (results are never overwritten by other "
                             "settings; pieces of one comparison may differ only in seeds and arms)")
        self.previous = previous

    def _earlier_trained_questions(self, seed: int | None = None) -> list[str] | None:
        """An RL arm's `trained_questions` for `seed` from an earlier piece in output_dir (None: none ran)."""
        runs = (self.previous or {}).get("runs", {})
        keys = [self._run_key(seed)] if seed is not None or not self.compare_args.seeds else \
            [self._run_key(s) for s in self.compare_args.seeds]
        for key in keys:
            found = next((r.get("trained_questions") for r in (runs.get(key) or {}).get("arms", {}).values()
                          if r.get("trained_questions")), None)
            if not found:
                return None
        return found

    @staticmethod
    def _run_key(seed: int | None) -> str:
        return "default" if seed is None else str(seed)

    def train_dataset(self):
        from datasets import Dataset

        return Dataset.from_list(self.train_rows)

    # ------------------------------------------------------------------ arms

    def _model_path(self, model_args) -> str:
        from ..embedded_model import resolve_model_path

        return resolve_model_path(model_args.model_name_or_path)

    def _init_kwargs(self, args, model_args) -> dict:
        kwargs = dict(args.model_init_kwargs or {})
        kwargs.setdefault("dtype", model_args.dtype)
        return kwargs

    def run_initial(self) -> dict:
        from ..engines.factory import EngineSpec, build_engine

        _, args, model_args = self.arm_args("none")
        engine = build_engine(EngineSpec("transformers", model=self._model_path(model_args),
                                         dtype=self._init_kwargs(args, model_args)["dtype"] or "auto",
                                         batch_size=self.compare_args.heldout_batch_size))
        start = time.perf_counter()
        record = {"step": 0, **self.evaluator.evaluate(engine)}
        return {"arm": "none", "curve": [record], "seconds": time.perf_counter() - start, "diagnostics": {}}

    def run_rl(self, arm: str, initial: dict | None) -> dict:
        from trl import GRPOTrainer
        from trl import get_peft_config as peft_config_of

        from ..rewards.gold import GoldAnswerReward
        from ..trainer import CaTGRPOTrainer
        from ..trl_compat import extra_vllm_llm_kwargs, install_weight_sync, restore_fsdp2_reference_model

        _, args, model_args = self.arm_args(arm)
        args.model_init_kwargs = self._init_kwargs(args, model_args)
        model_path = self._model_path(model_args)
        records = [dict(initial["curve"][0])] if initial else []
        # no initial score yet (held-out points in vLLM): this arm scores step 0, in its colocated engine
        callback = HeldOutEvalCallback(self.evaluator, self.steps if initial else [0, *self.steps], None, records,
                                       batch_size=self.compare_args.heldout_batch_size,
                                       on_record=lambda r: logger.info("compare %s step %d: %s", arm, r["step"],
                                                                 {k: v for k, v in r.items() if k != "problems"}))
        start = time.perf_counter()
        if arm == "gold":
            reward = GoldAnswerReward(args.cat_match, args.cat_match_timeout, args.cat_answer_extraction)
            # the same vLLM engine settings and (on vLLM's CPU build) weight sync as the CaT arms get
            with extra_vllm_llm_kwargs(args.cat_vllm_llm_kwargs if args.use_vllm else None):
                trainer = GRPOTrainer(model=model_path, reward_funcs=[reward], args=args,
                                      train_dataset=self.train_dataset(), peft_config=peft_config_of(model_args))
            install_weight_sync(getattr(trainer, "vllm_generation", None))
            restore_fsdp2_reference_model(trainer)  # as CaTGRPOTrainer does: pi_0 on every rank (KL reference)
        else:
            trainer = CaTGRPOTrainer(model=model_path, args=args, train_dataset=self.train_dataset(),
                                     peft_config=peft_config_of(model_args), anchor_model_name_or_path=model_path)
        callback.tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
        callback.accelerator = trainer.accelerator  # FSDP2 / ZeRO-3: held-out points are scored as a collective
        if self.heldout_in_vllm:  # the policy synced into TRL's colocated engine, one engine per point
            from ..engines.factory import EngineSpec, build_engine

            callback.engine_for = lambda model, trainer=trainer: build_engine(EngineSpec("vllm", weights="policy"),
                                                                              trainer)
        trainer.add_callback(callback)
        trained = trained_questions(trainer, args)
        trainer.train()
        callback.engine_for = None  # no reference to the trainer (and its vLLM engine) outlives this arm
        result = {"arm": arm, "curve": sorted(records, key=lambda r: r["step"]),
                  "seconds": time.perf_counter() - start, "diagnostics": _diagnostics(trainer.state.log_history),
                  "steps": trainer.state.global_step, "trained_questions": trained}
        with open(os.path.join(args.output_dir, "log_history.json"), "w") as f:
            json.dump(trainer.state.log_history, f, default=str)
        del trainer
        # The trainer sits in reference cycles (its callbacks hold it); collect them now, so that the next arm does not
        # start with this one's models, optimizer state and (colocated) vLLM engine still allocated.
        gc.collect()
        return result

    def run_cat_sft(self, initial: dict | None, trained: list[str] | None = None) -> dict:
        """The paper's SFT baseline on exactly the questions an RL arm of this seed trained on (`trained`: its
        `trained_questions`, in its order), validated on the `sft_validation_size` questions `prepare` set aside from
        every arm's training pool."""
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import EarlyStoppingCallback
        from trl import SFTConfig, SFTTrainer

        from ..engines.base import SamplingSettings
        from ..engines.factory import EngineSpec, build_engine, live_policy_engine
        from ..estimators import build_estimator
        from ..components import estimator_spec
        from .cat_sft import build_cat_sft_rows

        ca = self.compare_args
        _, args, model_args = self.arm_args("cat_sft")
        model_path = self._model_path(model_args)
        start = time.perf_counter()
        if not trained:
            raise ValueError("cat_sft trains on the questions the RL arms train on: list an RL arm (e.g. cat) before "
                             "cat_sft in arms")
        by_key = {_question_key(r): r for r in self.train_rows}
        questions = [by_key[k] for k in trained]
        validation_questions = self.sft_validation_rows  # set aside from every arm's training pool in `prepare`
        pi0 = build_engine(EngineSpec("transformers", model=model_path,
                                      dtype=self._init_kwargs(args, model_args)["dtype"] or "auto",
                                      batch_size=args.cat_anchor_batch_size, max_context=args.cat_anchor_max_context))
        policy_sampling = SamplingSettings(max_new_tokens=args.max_completion_length, temperature=args.temperature,
                                           top_p=args.top_p, top_k=args.top_k or 0, min_p=args.min_p, seed=args.seed)
        estimator = build_estimator(estimator_spec(args, "synthesis"), pi0)
        sft_rows, stats = build_cat_sft_rows(pi0, questions, args.num_generations, policy_sampling, estimator,
                                             args.chat_template_kwargs)
        val_rows, val_stats = build_cat_sft_rows(pi0, validation_questions, args.num_generations, policy_sampling,
                                                 estimator, args.chat_template_kwargs)
        del pi0, estimator
        if len(sft_rows) < 2 or len(val_rows) < 1:
            raise ValueError(f"CaT-SFT: only {len(sft_rows)} training / {len(val_rows)} validation references "
                             "synthesized; nothing to fine-tune on")
        random.Random(args.seed).shuffle(sft_rows)
        as_data = lambda rows: Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]}  # noqa: E731
                                                  for r in rows])
        train, val = as_data(sft_rows), as_data(val_rows)
        per_device = min(ca.sft_batch_size, 8)
        steps_per_epoch = max(1, math.ceil(len(train) / ca.sft_batch_size))
        sft_eval_every = max(1, steps_per_epoch // 2)
        out = args.output_dir  # <root>/cat_sft, or <root>/seed-<s>/cat_sft with several seeds
        config = SFTConfig(
            output_dir=out, learning_rate=ca.sft_learning_rate, lr_scheduler_type="cosine", warmup_steps=0.1,  # a float < 1 is a ratio
            per_device_train_batch_size=per_device,
            gradient_accumulation_steps=max(1, ca.sft_batch_size // per_device), num_train_epochs=ca.sft_epochs,
            eval_strategy="steps", eval_steps=sft_eval_every, save_strategy="steps", save_steps=sft_eval_every,
            save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="eval_loss",
            greater_is_better=False, logging_steps=1, report_to=[], seed=args.seed, use_cpu=args.use_cpu,
            bf16=args.bf16, max_length=None, completion_only_loss=True,
            model_init_kwargs=self._init_kwargs(args, model_args),
        )
        peft = LoraConfig(r=ca.sft_lora_r, lora_alpha=2 * ca.sft_lora_r, target_modules="all-linear",
                          task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model_path, args=config, train_dataset=train, eval_dataset=val, peft_config=peft,
                             callbacks=[EarlyStoppingCallback(early_stopping_patience=ca.sft_patience)])
        trainer.train()  # ends with the best (lowest validation loss) checkpoint loaded
        best = trainer.state.best_model_checkpoint
        for checkpoint in glob.glob(os.path.join(out, "checkpoint-*")):
            shutil.rmtree(checkpoint, ignore_errors=True)  # the model is in memory; adapters + optimizer are not kept
        tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
        model = trainer.model
        model.eval()
        record = {"step": args.max_steps, **self.evaluator.evaluate(
            live_policy_engine(model, tokenizer, ca.heldout_batch_size, trainer.accelerator))}
        evals = [(h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h]
        best_step = min(evals, key=lambda e: e[1])[0] if evals else None
        curve = ([dict(initial["curve"][0])] if initial else []) + [record]
        return {"arm": "cat_sft", "curve": curve, "seconds": time.perf_counter() - start,
                "trained_questions": [_question_key(r) for r in questions],
                "diagnostics": {"sft_references": stats["references"], "sft_dropped": stats["dropped"],
                                "sft_validation_references": val_stats["references"],
                                "cat/reference_parse_failure": stats["reference_parse_failure"],
                                "sft_eval_losses": [loss for _, loss in evals],
                                "sft_best_eval_loss": min(loss for _, loss in evals) if evals else float("nan"),
                                "sft_best_checkpoint": os.path.basename(best) if best else None,
                                # EarlyStoppingCallback ended training before its planned steps
                                "sft_early_stopping_triggered": trainer.state.global_step < trainer.state.max_steps,
                                "sft_best_step": best_step, "sft_last_eval_step": evals[-1][0] if evals else None,
                                "sft_steps": trainer.state.global_step}}

    # ------------------------------------------------------------------ all

    def run(self) -> dict:
        """Every arm for every seed; `prepare` first (it is where data and settings problems surface, before any
        model loads). The initial model is scored once: it does not depend on the training seed."""
        from ..evaluation.provenance import provenance

        if not hasattr(self, "evaluator"):
            self.prepare()
        arms = self.compare_args.arms
        wall = time.perf_counter()
        # Every arm's step 0, reported as `none` when asked for. Held-out points in TRL's colocated vLLM engine: the
        # first RL arm scores it there before its first update (no engine may be built beside the trainer's).
        trains = any(a in (*RL_ARMS, "gold") for a in arms)
        initial = None if self.heldout_in_vllm and trains else self.run_initial()
        runs = {}
        for seed in self.seeds():
            self.seed = seed
            results: dict[str, Any] = {}
            # CaT-SFT's questions: an RL arm's of this seed, from this piece or an earlier one in output_dir
            trained = self._earlier_trained_questions(seed) if seed is not None else \
                self._earlier_trained_questions()
            for arm in sorted((a for a in arms if a != "none"), key=lambda a: a == "cat_sft"):  # SFT after RL
                logger.info("compare: seed %s arm %s", seed, arm)
                results[arm] = (self.run_cat_sft(initial, trained) if arm == "cat_sft"
                                else self.run_rl(arm, initial))
                trained = results[arm].get("trained_questions") or trained
                if initial is None:
                    initial = {"arm": "none", "curve": [dict(results[arm]["curve"][0])], "diagnostics": {},
                               "seconds": results[arm]["curve"][0].get("seconds", 0.0), "scored_in": arm}
            if "none" in arms:
                results = {"none": initial, **results}
            runs[self._run_key(seed)] = {"seed": seed, "arms": results}
        self.seed = None
        _, args, model_args = self.arm_args("none")
        result = {
            "runs": runs,
            "eval_steps": [0, *self.steps],
            "heldout_size": sum(r["split"] == "in" for r in self.heldout_rows),
            "ood_size": sum(r["split"] == "ood" for r in self.heldout_rows),
            "train_problems": len(self.train_rows),
            "settings": {"compare": asdict(self.compare_args), "model": model_args.model_name_or_path,
                         "num_generations": args.num_generations, "max_steps": args.max_steps,
                         "learning_rate": args.learning_rate, "max_completion_length": args.max_completion_length,
                         "seed": args.seed, "cat_match": args.cat_match},
            "config": self.config,
            "config_sha256": self.config_sha256,
            "experiment_sha256": self.experiment_sha256,
            "provenance": provenance(),
            "wall_seconds": time.perf_counter() - wall,
        }
        return result if self.previous is None else merge_pieces(self.previous, result)
