"""A CRI client in the kubelet's place: plain dicts in and out, so that tests read like pod specs.

Requests are given as dicts in the CRI's field names (or as runtime.v1 messages); answers come back as
dicts with every field present, enums by name, so a test can compare `state == "SANDBOX_READY"` without
knowing protobuf's defaults.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tests.support.cri.proto import modules

pb, stubs = modules()


class CriError(RuntimeError):
    """A CRI call that failed: the method, gRPC status code and the runtime's message."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"CRI {method} failed: {code.name}: {details}")
        self.method, self.code, self.details = method, code, details


def to_dict(message: Message) -> dict[str, Any]:
    """Every field of message, defaults included, enums by name, maps as dicts."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _value(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_value(field, v) for v in value]
        else:
            out[field.name] = _value(field, value)
    return out


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return to_dict(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    return value


def _message(cls: Any, value: Mapping[str, Any] | Message) -> Any:
    if isinstance(value, Message):
        return value
    return json_format.ParseDict(dict(value), cls())


class RuntimeClient:
    """RuntimeService and ImageService of one CRI endpoint (a unix socket)."""

    def __init__(self, socket: Path | str, timeout: float = 60.0) -> None:
        self.socket = Path(socket)
        self.timeout = timeout
        self._channel = grpc.insecure_channel(f"unix://{self.socket}")
        self._runtime = stubs.RuntimeServiceStub(self._channel)
        self._images = stubs.ImageServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RuntimeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, stub: Any, method: str, request: Message, timeout: float | None = None) -> Any:
        try:
            return getattr(stub, method)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            raise CriError(method, error.code(), error.details() or "") from None

    # -- runtime -----------------------------------------------------------------------------------
    def version(self) -> dict[str, Any]:
        return to_dict(self._call(self._runtime, "Version", pb.VersionRequest(version="v1")))

    def status(self) -> dict[str, bool]:
        """The runtime's conditions by type: RuntimeReady, NetworkReady (a CNI config is loaded and, on
        containerd 2, its plugins' STATUS succeeded)."""
        return {kind: condition["status"] for kind, condition in self.conditions().items()}

    def conditions(self) -> dict[str, dict[str, Any]]:
        """The runtime's conditions by type with their reason and message (why NetworkReady is false)."""
        answer = self._call(self._runtime, "Status", pb.StatusRequest())
        return {condition.type: to_dict(condition) for condition in answer.status.conditions}

    def status_info(self) -> dict[str, str]:
        """The runtime's verbose status: containerd's "cniconfig" is the CNI configuration it has loaded (JSON)."""
        answer = self._call(self._runtime, "Status", pb.StatusRequest(verbose=True))
        return dict(answer.info)

    def run_pod_sandbox(self, config: Mapping[str, Any] | Message, runtime_handler: str = "") -> str:
        """The sandbox's id, once the runtime has made its netns and run the CNI ADD."""
        request = pb.RunPodSandboxRequest(config=_message(pb.PodSandboxConfig, config),
                                          runtime_handler=runtime_handler)
        return str(self._call(self._runtime, "RunPodSandbox", request).pod_sandbox_id)

    def stop_pod_sandbox(self, pod_id: str) -> None:
        self._call(self._runtime, "StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))

    def remove_pod_sandbox(self, pod_id: str) -> None:
        self._call(self._runtime, "RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    def pod_sandbox_status(self, pod_id: str, verbose: bool = False) -> dict[str, Any]:
        """The status; with verbose, also "info": the runtime's extra JSON (netns path, runtime spec)."""
        answer = self._call(self._runtime, "PodSandboxStatus",
                            pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose))
        status = to_dict(answer.status)
        if verbose:
            status["info"] = {key: json.loads(value) for key, value in answer.info.items()}
        return status

    def list_pod_sandbox(self, **filter: Any) -> list[dict[str, Any]]:
        """Filter by id, state ({"state": "SANDBOX_READY"}) or label_selector."""
        request = pb.ListPodSandboxRequest(filter=_message(pb.PodSandboxFilter, filter))
        return [to_dict(item) for item in self._call(self._runtime, "ListPodSandbox", request).items]

    def create_container(self, pod_id: str, config: Mapping[str, Any] | Message,
                         sandbox_config: Mapping[str, Any] | Message) -> str:
        request = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=_message(pb.ContainerConfig, config),
                                            sandbox_config=_message(pb.PodSandboxConfig, sandbox_config))
        return str(self._call(self._runtime, "CreateContainer", request).container_id)

    def start_container(self, container_id: str) -> None:
        self._call(self._runtime, "StartContainer", pb.StartContainerRequest(container_id=container_id))

    def stop_container(self, container_id: str, timeout: int = 0) -> None:
        """timeout: seconds between SIGTERM and SIGKILL (0: SIGKILL at once)."""
        self._call(self._runtime, "StopContainer", pb.StopContainerRequest(container_id=container_id, timeout=timeout),
                   timeout=self.timeout + timeout)

    def remove_container(self, container_id: str) -> None:
        self._call(self._runtime, "RemoveContainer", pb.RemoveContainerRequest(container_id=container_id))

    def container_status(self, container_id: str, verbose: bool = False) -> dict[str, Any]:
        answer = self._call(self._runtime, "ContainerStatus",
                            pb.ContainerStatusRequest(container_id=container_id, verbose=verbose))
        status = to_dict(answer.status)
        if verbose:
            status["info"] = {key: json.loads(value) for key, value in answer.info.items()}
        return status

    def list_containers(self, **filter: Any) -> list[dict[str, Any]]:
        """Filter by id, state ({"state": "CONTAINER_RUNNING"}), pod_sandbox_id or label_selector."""
        request = pb.ListContainersRequest(filter=_message(pb.ContainerFilter, filter))
        return [to_dict(item) for item in self._call(self._runtime, "ListContainers", request).containers]

    def exec_sync(self, container_id: str, cmd: Sequence[str], timeout: int = 10) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of cmd run in the container, as the kubelet's exec probes do."""
        request = pb.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout)
        answer = self._call(self._runtime, "ExecSync", request, timeout=timeout + 10)
        return int(answer.exit_code), answer.stdout.decode(errors="replace"), answer.stderr.decode(errors="replace")

    def container_logs(self, container_id: str) -> str:
        """The container's output from its CRI log file ("<time> <stream> <P|F> <text>" lines), as text."""
        path = Path(self.container_status(container_id)["log_path"])
        if not path.exists():
            return ""
        text = []
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split(" ", 3)
            if len(parts) < 4:
                continue
            tag, content = parts[2], parts[3]
            text.append(content if tag == "P" else content + "\n")
        return "".join(text)

    # -- images ------------------------------------------------------------------------------------
    def list_images(self) -> list[dict[str, Any]]:
        answer = self._call(self._images, "ListImages", pb.ListImagesRequest())
        return [to_dict(image) for image in answer.images]

    def image_status(self, image: str) -> dict[str, Any] | None:
        """The image's record, or None when the runtime does not have it."""
        answer = self._call(self._images, "ImageStatus", pb.ImageStatusRequest(image=pb.ImageSpec(image=image)))
        return to_dict(answer.image) if answer.HasField("image") else None
