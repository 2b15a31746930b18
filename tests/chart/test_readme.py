"""The README's deploy section, run: its `helm install` commands (client-side dry runs, as there is no cluster
here) give the objects of the matching overlay with the README's image, and its kustomization is the operator
overlay the node tier deploys (tests/support/manifests.py)."""

from __future__ import annotations

import pytest

from tests.support import chart, manifests

IMAGE = "registry.example.com/airlock/microgateway-cni:0.1.0"
# The README's helm commands in order: the plain install, GKE, OpenShift, Kubernetes < 1.32.
OVERLAYS = ["default", "gke", "openshift", "no-admission-policy"]


def test_the_readme_shows_one_helm_install_per_overlay():
    commands = chart.readme_commands("helm")
    assert [argv[:2] for argv in commands] == [["helm", "install"]] * len(OVERLAYS)


@pytest.mark.parametrize(("number", "overlay"), list(enumerate(OVERLAYS)))
def test_each_readme_helm_install_gives_its_overlays_objects(number, overlay):
    docs, notes = chart.install_dry_run(*chart.readme_commands("helm")[number][2:])
    found = chart.differences(docs, manifests.render(overlay, IMAGE))
    assert found == [], "\n".join(found)
    assert "-c airlock-microgateway-network-validator" in notes
    assert f"--image={IMAGE} --profile=netadmin" in notes and "microgateway-network-validator diagnose" in notes


def test_the_readme_kustomization_is_the_operator_overlay_the_node_tier_deploys():
    assert chart.readme_kustomization() == manifests.overlay_with_image("../daemonset/manifests/overlays/default",
                                                                         IMAGE)
