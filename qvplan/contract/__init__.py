"""The rule book both the plan and the agent judge by."""
