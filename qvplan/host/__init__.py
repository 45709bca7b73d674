"""What a host is, for every layer that serves it: its config, identity and trust, its VMs
(registry), its event hub and its facts. The agent builds one `Host`; migration works on it."""

from .context import Host, Operation

__all__ = ["Host", "Operation"]
