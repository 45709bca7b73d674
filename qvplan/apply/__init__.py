"""Carrying out a plan: trust exchange, waves of moves through the agents, journal, report."""

from .executor import ApplyResult, MoveResult, apply_plan

__all__ = ["ApplyResult", "MoveResult", "apply_plan"]
