"""The suite's Ray instances stay on loopback (tests/conftest.py sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)."""

import ray


def test_a_local_ray_started_by_a_test_binds_127_0_0_1():
    """The Ray this process has joined (a session fixture's, or one started here) runs on 127.0.0.1."""
    owns = not ray.is_initialized()
    if owns:
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        assert {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]} == {"127.0.0.1"}
    finally:
        if owns:
            ray.shutdown()
