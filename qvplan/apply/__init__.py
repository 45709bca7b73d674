"""Carrying out a plan: host locks, trust exchange, moves through the agents, journal, resume, report."""

from .executor import ApplyResult, MoveResult
from .session import ApplyRequest, Outcome, run_apply

__all__ = ["ApplyRequest", "ApplyResult", "MoveResult", "Outcome", "run_apply"]
