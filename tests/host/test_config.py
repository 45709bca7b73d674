"""The agent config is written from its own model and loads back unchanged (pure logic)."""

from __future__ import annotations

from qvplan.contract.ports import API_LISTEN
from qvplan.host.config import AgentConfig, load_config
from qvplan.host.configfile import api_listen


def test_to_toml_loads_back_into_the_same_config(tmp_path):
    cfg = AgentConfig.model_validate({
        "host": {"name": "hv-a", "state_dir": str(tmp_path / 'odd "dir" \\ é'), "memory": "4G"},
        "api": {"listen": "127.0.0.2:19400"},
        "migration": {"listen": "127.0.0.2:19410", "advertise": "10.0.0.1:9410", "pqc_required": False},
        "storage": {"pools": {"default": "/a", "fast pool": "/b"}, "shared": ["/mnt/nfs", "/mnt/ceph"]},
    })
    file = tmp_path / "q.conf"
    file.write_text(cfg.to_toml())
    assert load_config(file).model_dump() == cfg.model_dump()
    assert api_listen(file) == "127.0.0.2:19400"


def test_defaults_leave_unset_keys_out(tmp_path):
    file = tmp_path / "q.conf"
    file.write_text(AgentConfig.model_validate({"host": {"name": "hv-b"}}).to_toml())
    assert "advertise" not in file.read_text() and "state_dir" not in file.read_text()
    assert api_listen(file) == API_LISTEN
