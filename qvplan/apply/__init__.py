"""Carrying out a plan: host locks, trust exchange, moves through the agents, journal, resume, report.

`session.run_apply` is one `qvplan apply`; `progress.Board` is the pure model its views draw.
Nothing is imported here, so reading the board does not load the executor or asyncssh.
"""
