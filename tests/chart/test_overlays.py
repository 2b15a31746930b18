"""One source of truth: the chart renders the kustomize overlays' objects, apart from what it lists by name.

Default values against overlays/default, each preset against its overlay, admissionPolicy.enabled=false against
overlays/no-admission-policy; the listed differences are Helm's labels and the ConfigMap checksum annotation
(tests/support/chart.py). A change to one side without the other fails here with a diff.
"""

from __future__ import annotations

import re

import pytest

from tests.support import chart, manifests

CASES = {
    "default": ([], []),
    "gke": ([chart.PRESETS["gke"]], []),
    "openshift": ([chart.PRESETS["openshift"]], []),
    "no-admission-policy": ([], ["admissionPolicy.enabled=false"]),
}


@pytest.mark.parametrize("overlay", CASES)
def test_the_chart_renders_the_overlays_objects(overlay):
    values, settings = CASES[overlay]
    found = chart.differences(chart.render(values, settings), manifests.render(overlay))
    assert found == [], "\n".join(found)


def test_the_comparison_sees_a_value_the_overlay_does_not_have():
    found = chart.differences(chart.render(settings=["config.logLevel=debug"]), manifests.render("default"))
    assert len(found) == 1 and found[0].startswith("('v1', 'ConfigMap', 'kube-system', 'microgateway-cni')"), found
    assert "\n-  MGW_LOG_LEVEL: info\n+  MGW_LOG_LEVEL: debug\n" in found[0]


def test_the_listed_differences_are_what_the_chart_adds():
    for doc in chart.render():
        assert set(chart.HELM_LABELS) <= set(doc["metadata"]["labels"]), chart.key(doc)
    template = chart.find(chart.render(), "DaemonSet")["spec"]["template"]["metadata"]
    assert re.fullmatch(r"[0-9a-f]{64}", template["annotations"][chart.CHECKSUM_ANNOTATION])
