"""Placement on a multi-node Ray cluster: the registry's custom resources reach Serve's
`ray_actor_options`, so an expert's replicas run only on nodes that declare those resources
(tests/integration/test_node_loss.py runs it on a real two-node cluster)."""

import pytest

from experts.errors import RegistryError
from experts.registry import parse_registry
from serving.deployments import expert_deployment, expert_pool_deployment


def _registry(*resources: dict, residency: dict | None = None):
    experts = [{"name": f"e{i}", "model": "m", "resources": r} for i, r in enumerate(resources)]
    return parse_registry({"experts": experts} | ({"residency": residency} if residency else {}))


def test_an_experts_custom_resources_become_its_replicas_ray_resources():
    registry = _registry({"cpus": 1, "custom": {"node_b": 1}}, {"cpus": 2})
    placed, anywhere = (expert_deployment(e).ray_actor_options for e in registry.experts)
    assert placed["resources"] == {"node_b": 1.0} and placed["num_cpus"] == 1.0
    assert "resources" not in anywhere and anywhere["num_cpus"] == 2.0


def test_the_shared_pool_needs_a_node_that_fits_every_hosted_expert():
    registry = _registry(
        {"custom": {"node_b": 1, "big_mem": 2}},
        {"custom": {"node_b": 3}},
        residency={"slots": 1},
    )
    options = expert_pool_deployment(registry).ray_actor_options
    assert options["resources"] == {"node_b": 3.0, "big_mem": 2.0}


@pytest.mark.parametrize(
    ("custom", "message"),
    [({"CPU": 1}, "Ray's own: use cpus/gpus/memory_gb"), ({"node_b": 0}, "greater than 0")],
)
def test_a_bad_custom_resource_is_refused_with_the_field_and_the_fix(custom, message):
    with pytest.raises(RegistryError) as info:
        _registry({"custom": custom})
    assert "experts.0.resources" in str(info.value) and message in str(info.value)
