"""cni.records.record: typing.NamedTuple's behaviour without importing typing."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from cni.records import record
from cni.rules import Rule


@record
class Sample:
    """A sample record."""

    name: str
    port: int | None = None
    tags: tuple[str, ...] = ()

    def label(self) -> str:
        return f"{self.name}:{self.port}"


def test_fields_defaults_methods_and_docstring():
    sample = Sample("web")
    assert Sample._fields == ("name", "port", "tags")
    assert sample == Sample("web", None, ()) == ("web", None, ())
    assert sample._replace(port=80).label() == "web:80"
    assert Sample.__doc__ == "A sample record." and Sample.__module__ == __name__
    with pytest.raises(AttributeError):
        sample.other = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        Sample()  # type: ignore[call-arg]


def test_records_cross_the_worker_pipe():
    rule = Rule(chain="MGW_INBOUND", target="REDIRECT", to_port=13378)
    assert pickle.loads(pickle.dumps(rule)) == rule and type(pickle.loads(pickle.dumps(rule))) is Rule


def test_fields_with_defaults_come_last():
    with pytest.raises(TypeError, match="defaults must come last"):
        @record
        class Wrong:
            first: int = 1
            second: str


@pytest.mark.parametrize(("modules", "absent"), [
    ("cni.main, cni.kube, cni.pod.applier, cni.pod.runner, cni.pod.netns, cni.netfilter.choice, "
     "cni.netfilter.legacy.backend, cni.netfilter.legacy.libiptc, cni.netfilter.nftables.backend, "
     "cni.netfilter.nftables.decoder, cni.model, cni.policy, cni.rules", ("typing", "inspect")),
    ("validator.main, validator.verdict, validator.options", ("typing", "inspect", "json", "re")),
    ("cni.main, cni.netfilter.choice, cni.netfilter.nftables.backend", ("cni.netfilter.nftables.decoder",)),
])
def test_the_per_pod_paths_do_not_import_what_they_avoid(modules: str, absent: tuple[str, ...]):
    """typing is paid on every frozen plugin and validator start (cni/records.py), json and re on the
    validator's (validator/jsonline.py), the nftables decoder only by the commands that read (CHECK)."""
    code = f"import sys; import {modules}; print(sorted(m for m in {absent!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {sys.path!r}; {code}"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
