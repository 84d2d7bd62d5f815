"""The engine: plan a resolved recipe into steps, run only what changed, archive every run.

Importing it is cheap: torch and safetensors are imported only by the code that stores tensors.
"""

from wanflow.engine.cache import Cache
from wanflow.engine.execute import Executor, Session, StepResult
from wanflow.engine.explain import Explanation, explain
from wanflow.engine.keys import EXCLUDED_POLICY_FIELDS, canonical_json, is_policy_field, key_of
from wanflow.engine.plan import Plan, PlannedStep, plan
from wanflow.engine.runner import RunOptions, RunOutcome, run_job, run_recipe
from wanflow.engine.step import Pipeline, Step, StepContext, StepSpec, WeightFile

__all__ = [
    "EXCLUDED_POLICY_FIELDS", "Cache", "Executor", "Explanation", "Pipeline", "Plan",
    "PlannedStep", "RunOptions", "RunOutcome", "Session", "Step", "StepContext", "StepResult",
    "StepSpec", "WeightFile", "canonical_json", "explain", "is_policy_field", "key_of", "plan",
    "run_job", "run_recipe",
]
