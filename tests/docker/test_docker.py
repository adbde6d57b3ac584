import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_config_passes_rays_own_schema():
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((ROOT / "docker" / "ray-cluster.yaml").read_text())
    validate_config(config)  # what `ray up` and `ray submit` run first; raises on any schema error
    assert config["head_node_type"] in config["available_node_types"]


def test_cluster_opens_no_port_beyond_ssh_and_keeps_the_dashboard_local():
    config = yaml.safe_load((ROOT / "docker" / "ray-cluster.yaml").read_text())
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    assert all(r["CidrIp"] != "0.0.0.0/0" for rule in rules for r in rule["IpRanges"])
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head


def test_image_installs_every_package_and_pins_torch():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY \S+ (\w+) \./\w+$", dockerfile, flags=re.M))
    assert copied == {"preprocess", "shards", "train", "tools"}
    assert "torch==2.14.1 torchvision==0.29.1" in dockerfile
    assert "HF_HUB_OFFLINE=1" in dockerfile
