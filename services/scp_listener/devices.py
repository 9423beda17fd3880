"""The device registry: calling AE title -> what the sending device is.

A mistake in the file is a ``RegistryError`` naming the file, the line and what is allowed.
``DeviceRegistry`` keeps the last good registry while the SCP runs and reloads it on SIGHUP
or when the file changes; a bad edit is logged and changes nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import structlog
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.events import SourceDevice
from shared.settings import SettingError

log = structlog.get_logger(__name__)

Role = Literal["linac", "ct_simulator", "tps", "ois", "other"]
ROLES: tuple[str, ...] = get_args(Role)


class Device(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ae_title: str = Field(min_length=1, max_length=16)
    role: Role
    machine: str | None = None
    site: str | None = None

    @field_validator("ae_title")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    def as_source(self) -> SourceDevice:
        return SourceDevice(
            ae_title=self.ae_title, role=self.role, machine=self.machine, site=self.site
        )


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: list[Device] = Field(min_length=1)

    def by_ae(self) -> dict[str, Device]:
        return {d.ae_title: d for d in self.devices}


class RegistryError(SettingError):
    """The device registry file cannot be used; the message says where and why."""


SETTING = "RTOPS_SCP_DEVICE_REGISTRY"


def load_registry(path: Path) -> dict[str, Device]:
    """Parse and check the YAML: every mistake is a ``RegistryError`` naming the line."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RegistryError(
            f"device registry {path} not found: create it (see the README, 'Pointing a linac') "
            f"or set {SETTING} to your registry's path"
        ) from None
    except OSError as exc:
        raise RegistryError(f"device registry {path}: {exc.strerror or exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RegistryError(f"{path}{where}: not valid YAML: {problem}") from None
    try:
        registry = Registry.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise RegistryError(_explain(path, node, exc)) from None
    seen: dict[str, int] = {}
    for index, device in enumerate(registry.devices):
        line = _line(node, ("devices", index))
        if device.ae_title in seen:
            raise RegistryError(
                f"{path} line {line}: AE title {device.ae_title!r} is listed twice (first on "
                f"line {seen[device.ae_title]}); each device needs its own AE title"
            )
        seen[device.ae_title] = line
    return registry.by_ae()


def _explain(path: Path, node: yaml.Node | None, exc: ValidationError) -> str:
    """The first error, in words: where (line) and what is allowed."""
    error = exc.errors()[0]
    loc = tuple(error["loc"])
    kind, value = error["type"], error.get("input")
    field = str(loc[-1]) if loc else ""
    if kind == "literal_error" and field == "role":
        hint = f"; roles are lower case: {value.lower()!r}?" if str(value).lower() in ROLES else ""
        what = f"role {value!r} is not allowed; use one of {', '.join(ROLES)}{hint}"
    elif kind == "extra_forbidden":
        allowed = ", ".join(Device.model_fields if len(loc) > 2 else Registry.model_fields)
        what = f"unknown key {field!r}; the keys are {allowed}"
        loc = (*loc[:-1], ("key", field))
    elif kind == "missing":
        what = f"{field!r} is missing" + (
            f"; it is one of {', '.join(ROLES)}" if field == "role" else ""
        )
        loc = loc[:-1]
    elif kind == "too_short" and loc == ("devices",):
        what = "the registry lists no devices: no device could send; add one under 'devices:'"
    elif kind == "model_type" and not loc:
        what = "the file must be a mapping with a 'devices:' list (see the README)"
    elif field == "ae_title":
        what = f"ae_title {value!r}: {error['msg'].lower()} (an AE title has 1 to 16 characters)"
    else:
        what = f"{'.'.join(map(str, loc)) or 'the file'}: {error['msg']}"
    line = _line(node, loc)
    return f"{path}{f' line {line}' if line else ''}: {what}"


def _line(node: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """1-based line of the node at ``loc`` (the deepest one found), 0 if none."""
    best = node.start_mark.line + 1 if node is not None else 0
    for part in loc:
        if node is None:
            break
        if isinstance(node, yaml.MappingNode):
            wanted, key_only = (part[1], True) if isinstance(part, tuple) else (part, False)
            match = next(((k, v) for k, v in node.value if k.value == wanted), None)
            if match is None:
                break
            node = match[0] if key_only else match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        else:
            break
        best = node.start_mark.line + 1
    return best


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class DeviceRegistry:
    """The registry in force. ``devices`` is replaced whole on a good reload (readers on other
    threads see the old or the new dict, never a mix); listeners (the AE's accepted calling
    AE titles) are told of each new one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = _stamp(path)
        self.devices: dict[str, Device] = load_registry(path)
        self._listeners: list[Callable[[dict[str, Device]], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Callable[[dict[str, Device]], None]) -> None:
        self._listeners.append(listener)
        listener(self.devices)

    def reload(self, why: str = "requested") -> bool:
        """Load the file again; on a mistake keep the registry in force and log why."""
        with self._lock:
            self._stamp = _stamp(self.path)
            try:
                devices = load_registry(self.path)
            except RegistryError as exc:
                log.error(
                    "device registry not reloaded: the registry in force is kept",
                    error=str(exc),
                    path=str(self.path),
                    trigger=why,
                )
                return False
            before = set(self.devices)
            self.devices = devices
            for listener in self._listeners:
                listener(devices)
        log.info(
            "device registry reloaded",
            path=str(self.path),
            trigger=why,
            devices=sorted(devices),
            added=sorted(set(devices) - before),
            removed=sorted(before - set(devices)),
        )
        return True

    def reload_if_changed(self) -> bool:
        """The periodic check: reload when the file's mtime, size or inode changed."""
        if _stamp(self.path) == self._stamp:
            return False
        return self.reload("file changed")

    def case_hint(self, title: str) -> str | None:
        """A registered AE title equal to ``title`` but for case (or padding)."""
        wanted = title.strip().upper()
        return next((t for t in self.devices if t.upper() == wanted and t != title), None)
