"""Migration, both directions: live (pre-copy), live + storage, offline; the streams that carry
QEMU's bytes through PQC channels; the undo list and recovery of incoming migrations.

`MigrationService` is what the agent builds from it: it owns the migrations of one host and
hands the agent its operations (:9410) and routes (:9400) (`migration/service.py`). Nothing is
imported here, so reading `migration/status.py` (the host CLI does) does not load the service.
"""
