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


def test_local_cluster_config_passes_rays_own_schema():
    """docker/ray-local.yaml as `ray up` reads it: Ray fills the single local node type in, then validates."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "docker" / "ray-local.yaml").read_text())
    assert config["provider"]["type"] == "local"
    assert {"head_ip", "worker_ips"} <= set(config["provider"])
    prepared = prepare_config(config)
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # the checkout and the auth token reach every node; the project is installed there with torch pinned
    assert config["file_mounts"]["~/mcld-data"] == "."
    assert "~/.ray/auth_token" in config["file_mounts"]
    setup = "\n".join(config["setup_commands"])
    assert "torch==2.14.1 torchvision==0.29.1" in setup and "pip install --quiet -e ~/mcld-data" in setup
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in commands[-1]
    assert "--dashboard-host=127.0.0.1" in config["head_start_ray_commands"][-1]


def test_image_switches_onnxruntime_to_the_gpu_build():
    """onnxruntime and onnxruntime-gpu install the same module: the image installs the gpu extra, removes the
    CPU wheel, reinstalls the GPU one over it, and fails its build without the CUDA provider."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (gpu,) = extras["gpu"]
    assert gpu.startswith("onnxruntime-gpu")
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    steps = [dockerfile.index(step) for step in ('-e ".[gpu]"', "pip uninstall -y onnxruntime",
                                                  f'--force-reinstall --no-deps "{gpu}"',
                                                  "'CUDAExecutionProvider' in onnxruntime.get_available_providers()")]
    assert steps == sorted(steps)
