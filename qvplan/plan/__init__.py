"""The plan side of qvplan: plan files → a checked dependency graph → a `Plan` (pure, over facts).

Entry points: `load_plan` / `make_plan` / `plan_file`, facts in `facts`, the result types in
`model`, saved plans in `saved`.
"""

from .diagnostics import Diagnostic, PlanError
from .facts import FactsDoc, facts_hash, live_facts, load_facts, save_facts
from .loader import LoadedPlan, load_plan, load_plan_text
from .model import Action, Check, Move, Plan, Status, Wave
from .planner import make_plan, plan_file
from .saved import check_fresh, load_saved, save_plan

__all__ = [
    "Action", "Check", "Diagnostic", "FactsDoc", "LoadedPlan", "Move", "Plan", "PlanError", "Status", "Wave",
    "check_fresh", "facts_hash", "live_facts", "load_facts", "load_plan", "load_plan_text", "load_saved",
    "make_plan", "plan_file", "save_facts", "save_plan",
]
