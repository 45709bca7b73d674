"""Issue 12's attacks on a root agent, run for real as the unprivileged user `nobody`."""
