"""The host daemon: HTTP API (:9400), migration listener (:9410), VM registry, events."""
