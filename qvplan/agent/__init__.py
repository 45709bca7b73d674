"""The host daemon: the control socket (every change), the read-only API (:9400), the migration listener (:9410)."""
