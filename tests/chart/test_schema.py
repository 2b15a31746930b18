"""values.schema.json refuses what the chart cannot mean, naming the value, before anything reaches a cluster;
and `helm lint --strict` finds nothing in the chart or its presets."""

from __future__ import annotations

import pytest

from tests.support import chart

SCHEMA_ERROR = ("Error: INSTALLATION FAILED: values don't meet the specifications of the schema(s) in the "
                "following chart(s):\nmicrogateway-cni:\n")


@pytest.mark.parametrize(("setting", "message"), [
    ("colour=red", "- at '': additional properties 'colour' not allowed"),
    ("config.instalMode=ahead", "- at '/config': additional properties 'instalMode' not allowed"),
    ("config.installMode=sidecar",
     "- at '/config/installMode': value must be one of 'chained', 'ahead', 'standalone', 'manual'"),
    ("image.digest=sha256:abc", "- at '/image/digest': 'sha256:abc' does not match pattern '^(sha256:[a-f0-9]{64})?$'"),
    ("image.digest=sha256:" + "A" * 64, "- at '/image/digest': 'sha256:AAAA"),
    ("image.repository=microgateway-cni:0.1.0", "- at '/image/repository': 'microgateway-cni:0.1.0' does not match"),
    ("config.startupTaint=not ready", "- at '/config/startupTaint': 'not ready' does not match"),
    ("config.excludeNamespaces={Kube_System}", "- at '/config/excludeNamespaces/0': 'Kube_System' does not match"),
    ("config.cniBinDir=opt/cni/bin", "- at '/config/cniBinDir': 'opt/cni/bin' does not match"),
    ("tolerations[0].operator=Maybe", "- at '/tolerations/0/operator': value must be one of 'Exists', 'Equal'"),
    ("resources.request.cpu=1", "- at '/resources': additional properties 'request' not allowed"),
    ("privileged=yes", "- at '/privileged': got string, want boolean"),
])
def test_helm_install_refuses_a_value_naming_it(setting, message):
    with pytest.raises(chart.ChartError) as refused:
        chart.install_dry_run(chart.RELEASE, str(chart.CHART), f"--namespace={chart.NAMESPACE}", f"--set={setting}")
    assert str(refused.value).startswith(SCHEMA_ERROR) and message in str(refused.value), str(refused.value)


@pytest.mark.parametrize("preset", [None, *chart.PRESETS])
def test_lint_strict_is_clean(preset):
    done = chart.lint([chart.PRESETS[preset]] if preset else [])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout
