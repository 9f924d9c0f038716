"""Names of the label columns. Labels are for diagnostics and evaluation only: `CaTGRPOTrainer` strips these
columns from every input before a reward function is called (the physician-rubric oracle is the one, explicit,
exception)."""

#: gold final answers (verifiable tasks): diagnostic metrics only
GOLD_COLUMN = "gold_answer"
#: HealthBench physician rubrics (JSON list of {criterion, points, tags}): evaluation and the oracle baseline only
GOLD_RUBRICS_COLUMN = "gold_rubrics"
