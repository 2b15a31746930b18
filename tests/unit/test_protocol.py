import json

import pytest

from cni.errors import CniError
from cni.protocol import build_request, convert_result, parse_cni_args, version_result

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
       "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"}


def conf(version="1.0.0", **extra):
    return json.dumps({"cniVersion": version, "name": "n", "type": "microgateway-cni", **extra}).encode()


@pytest.mark.parametrize(("env_change", "stdin", "code", "text"), [
    ({"CNI_COMMAND": ""}, conf(), 4, "CNI_COMMAND is not set"),
    ({"CNI_COMMAND": "FROB"}, conf(), 4, "'FROB'"),
    ({"CNI_NETNS": ""}, conf(), 4, "CNI_NETNS"),
    ({"CNI_CONTAINERID": ""}, conf(), 4, "CNI_CONTAINERID"),
    ({}, b"{", 6, "not valid JSON"),
    ({}, b"[1]", 6, "JSON object"),
    ({}, b"\xff\xfe", 6, "not valid JSON"),
    ({}, conf("0.2.0"), 1, "unsupported cniVersion"),
    ({}, conf("2.0.0"), 1, "unsupported cniVersion"),
    ({"CNI_COMMAND": "GC"}, conf("1.0.0"), 1, "GC needs cniVersion 1.1.0"),
    ({"CNI_COMMAND": "STATUS"}, conf("0.4.0"), 1, "STATUS needs"),
    ({"CNI_COMMAND": "CHECK"}, conf("0.3.1"), 1, "CHECK needs"),
    ({"CNI_COMMAND": "CHECK"}, conf("1.0.0"), 7, "prevResult is required"),
    ({"CNI_ARGS": "K8S_POD_NAME"}, conf(), 4, "CNI_ARGS"),
    ({}, conf(prevResult=[1]), 7, "prevResult must be an object"),
])
def test_bad_requests_name_the_problem(env_change, stdin, code, text):
    with pytest.raises(CniError) as err:
        build_request({**ENV, **env_change}, stdin)
    assert err.value.code == code
    assert text in err.value.msg


def test_del_needs_no_netns():
    request = build_request({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}, conf())
    assert request.command == "DEL"
    assert request.args == {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "p"}


@pytest.mark.parametrize(("raw", "expected"), [
    ("", {}),
    ("A=1", {"A": "1"}),
    ("A=1;B=x=y;", {"A": "1", "B": "x=y"}),
])
def test_cni_args(raw, expected):
    assert parse_cni_args(raw) == expected


@pytest.mark.parametrize(("stdin", "version"), [(b"", "1.1.0"), (b'{"cniVersion":"0.3.1"}', "0.3.1")])
def test_version(stdin, version):
    assert version_result(stdin) == {"cniVersion": version,
                                     "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


PREV_1 = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}],
          "ips": [{"address": "10.0.0.2/24", "interface": 0}, {"address": "fd00::2/64", "interface": 0}],
          "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.0.0.10"]}}


@pytest.mark.parametrize(("to", "versions"), [
    ("0.3.0", ["4", "6"]), ("0.3.1", ["4", "6"]), ("0.4.0", ["4", "6"]), ("1.0.0", [None, None]),
    ("1.1.0", [None, None]),
])
def test_convert_result(to, versions):
    out = convert_result(PREV_1, to)
    assert out["cniVersion"] == to
    assert [ip.get("version") for ip in out["ips"]] == versions
    assert [ip["address"] for ip in out["ips"]] == ["10.0.0.2/24", "fd00::2/64"]
    for key in ("interfaces", "routes", "dns"):
        assert out[key] == PREV_1[key]
    back = convert_result(out, "1.0.0")
    assert back == {**PREV_1}


def test_convert_without_prev_result():
    assert convert_result(None, "0.4.0") == {"cniVersion": "0.4.0"}
