"""What a host is, for every layer that serves it: its config, identity and trust, its VMs
(registry), its event hub and its facts. The agent builds one `Host` (`host/context.py`); migration
works on it. Nothing is imported here, so the CLI can read the config file without the rest."""
