"""One construction path for reference estimators: `EstimatorSpec` -> `build_estimator`, used by every caller.

The trainer (`components.estimator_spec`), `cat-trl eval`'s methods, CaT-SFT, the pre-flight context check and the
self-contained plain-TRL reward all describe their estimator as a spec; these tests pin what each spec builds, the
anchor-sampling fallback rule (once, here), and that no library module constructs an estimator class by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cat_trl.engines.base import Engine, Generation, SamplingSettings
from cat_trl.estimators import (
    ESTIMATORS,
    EstimatorSpec,
    Group,
    MajorityEstimator,
    MinPPLEstimator,
    MutualPredictabilityEstimator,
    SelfBoNEstimator,
    SynthesisEstimator,
    anchor_sampling,
    build_estimator,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "cat_trl"
SAMPLING = SamplingSettings(max_new_tokens=8, temperature=0.0)


class _Echo(Engine):
    name = "echo"

    def __init__(self, text="\\boxed{4}"):
        super().__init__()
        self.text, self.prompts = text, []

    def generate(self, conversations, sampling, chat_template_kwargs=None):
        self.prompts += [c[-1]["content"] for c in conversations]
        return [Generation(self.text) for _ in conversations]


@pytest.mark.parametrize("kind, cls", [
    ("synthesis", SynthesisEstimator), ("majority", MajorityEstimator), ("self_bon", SelfBoNEstimator),
    ("min_ppl", MinPPLEstimator), ("mutual_predictability", MutualPredictabilityEstimator),
])
def test_every_kind_builds_its_estimator(kind, cls):
    sampling = SAMPLING if kind in ("synthesis", "self_bon") else None
    est = build_estimator(EstimatorSpec(kind, sampling=sampling, fallback="first"), _Echo())
    assert type(est) is cls
    assert kind in ESTIMATORS


def test_settings_reach_the_estimator():
    spec = EstimatorSpec("synthesis", SAMPLING, template="Merge: {responses}", include_question=False,
                         max_context_tokens=512, answer_extraction="boxed_or_final_numeric",
                         chat_template_kwargs={"enable_thinking": False})
    engine = _Echo("The answer is 12.")
    est = build_estimator(spec, engine)
    assert est.sampling == SAMPLING and est.max_context_tokens == 512
    (ref,) = est.estimate([Group("q", ["\\boxed{1}", "\\boxed{2}"])])
    assert engine.prompts[0].startswith("Merge: ")
    assert ref.answer == "12"  # boxed_or_final_numeric read the final-answer phrase
    mp = build_estimator(EstimatorSpec("mutual_predictability", seed=7, max_context_tokens=300), _Echo())
    assert mp.seed == 7 and mp.max_context_tokens == 300


def test_majority_clusters_with_the_specified_matcher():
    group = Group("q", ["\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "\\boxed{7}"])
    (string,) = build_estimator(EstimatorSpec("majority", match="string")).estimate([group])
    (equivalent,) = build_estimator(EstimatorSpec("majority", match="equivalent")).estimate([group])
    assert (string.diagnostics["majority_size"], string.diagnostics["num_clusters"]) == (1, 3)
    assert (equivalent.answer, equivalent.diagnostics["majority_size"]) == ("0.5", 2)


@pytest.mark.parametrize("spec_kwargs, message", [
    ({"kind": "synthesys"}, "is not one of"),
    ({"kind": "majority", "answer_extraction": None}, "open-ended"),
    ({"kind": "synthesis"}, "sampling settings"),
    ({"kind": "self_bon"}, "sampling settings"),
    ({"kind": "min_ppl", "include_question": True}, "synthesis setting"),
    ({"kind": "min_ppl", "template": "{responses}"}, "writes no prompt"),
    ({"kind": "mutual_predictability", "template": "{responses}"}, "writes no prompt"),
])
def test_bad_specs_are_refused_by_name(spec_kwargs, message):
    with pytest.raises(ValueError, match=message):
        EstimatorSpec(**spec_kwargs)


@pytest.mark.parametrize("kind", ["synthesis", "self_bon", "min_ppl", "mutual_predictability"])
def test_engine_estimators_need_an_engine(kind):
    spec = EstimatorSpec(kind, sampling=SAMPLING if kind in ("synthesis", "self_bon") else None)
    assert spec.needs_engine
    with pytest.raises(ValueError, match="needs an anchor engine"):
        build_estimator(spec, None)


def test_anchor_sampling_falls_back_field_by_field():
    class Policy:  # GRPOConfig's sampling fields
        temperature, top_p, top_k, min_p, repetition_penalty = 0.6, 0.9, 20, 0.05, 1.1

    s = anchor_sampling(Policy(), max_new_tokens=64, temperature=0.7)
    assert (s.max_new_tokens, s.temperature, s.top_p, s.top_k, s.min_p, s.repetition_penalty) == \
        (64, 0.7, 0.9, 20, 0.05, 1.1)
    neutral = anchor_sampling(None, max_new_tokens=8, seed=3)
    assert (neutral.temperature, neutral.top_p, neutral.top_k, neutral.min_p, neutral.seed) == (1.0, 1.0, 0, None, 3)

    class NoTopK(Policy):
        top_k = None  # TRL's "no top-k"

    assert anchor_sampling(NoTopK(), max_new_tokens=8).top_k == 0


def test_trainer_config_spec_follows_cat_settings():
    from cat_trl.config import CaTGRPOConfig
    from cat_trl.components import estimator_spec

    args = CaTGRPOConfig(output_dir="/tmp/unused", use_cpu=True, bf16=False, temperature=0.9,
                         cat_anchor_max_new_tokens=77, cat_anchor_temperature=0.3, cat_answer_extraction="boxed_or_final",
                         cat_match="equivalent", cat_estimator="mutual_predictability", seed=11)
    spec = estimator_spec(args)
    assert (spec.kind, spec.sampling, spec.seed, spec.match, spec.answer_extraction) == \
        ("mutual_predictability", None, 11, "equivalent", "boxed_or_final")
    synthesis = estimator_spec(args, "synthesis")  # CaT-SFT
    assert synthesis.sampling.max_new_tokens == 77 and synthesis.sampling.temperature == 0.3
    assert synthesis.sampling.top_p == args.top_p and synthesis.template == args.synthesis_template


def test_no_library_module_constructs_an_estimator_by_hand():
    """The one construction path: estimator classes are instantiated only in `estimators/spec.py` (and wrapped, for
    rubrics, by `RubricEstimator`)."""
    classes = "SynthesisEstimator|MajorityEstimator|SelfBoNEstimator|MinPPLEstimator|MutualPredictabilityEstimator"
    pattern = re.compile(rf"\b({classes})\(")
    offenders = []
    for path in SRC.rglob("*.py"):
        if path == SRC / "estimators" / "spec.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and not line.lstrip().startswith("class "):
                offenders.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
    assert offenders == []
