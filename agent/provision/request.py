"""What ``foreshock device provision`` was asked (:class:`Request`, validated on
construction) and where the files it writes live on the device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from foreshock import topics
from foreshock.errors import ConfigError

ETC: Final = "/etc/foreshock"
CONFIG: Final = f"{ETC}/agent.toml"
KEY: Final = f"{ETC}/tls/device.key"
CSR: Final = f"{ETC}/tls/device.csr"
CERT: Final = f"{ETC}/tls/device.crt"
CA_CERT: Final = f"{ETC}/tls/ca.crt"
MODEL_KEY: Final = f"{ETC}/model-signing.pub"
STATE_DIR: Final = "/var/lib/foreshock"
UNIT_NAME: Final = "foreshock-agent.service"
UNIT_DIR: Final = "/etc/systemd/system"
UNIT_SOURCE: Final = Path(__file__).resolve().parent.parent / "deploy" / UNIT_NAME
RENEW_DAYS: Final = 30


@dataclass(frozen=True)
class Request:
    """What ``provision`` was asked to do (the CLI options)."""

    device_id: str
    site: str
    broker_url: str
    root: Path = Path("/")
    ca_dir: Path | None = None
    csr_out: Path | None = None
    cert_in: Path | None = None
    ca_cert: Path | None = None
    model_key: Path | None = None
    systemd: bool = True
    dry_run: bool = False
    source: str | None = None
    paths_under_root: bool = False

    def __post_init__(self) -> None:
        if self.paths_under_root and self.root == Path("/"):
            raise ConfigError("--paths-under-root needs --root DIR")
        if self.source is not None:
            parse_source(self.source)
        topics.check_id(self.device_id, "--device-id")
        topics.check_id(self.site, "--site")
        if not self.broker_url.startswith("mqtts://"):
            raise ConfigError(f"--broker {self.broker_url!r} must be mqtts://host:port: "
                              "a provisioned device talks TLS only")

    def path(self, device_path: str) -> Path:
        """Where a device path lives on this machine (under ``--root``)."""
        return self.root / device_path.lstrip("/")

    def config_path(self, device_path: str) -> str:
        """A path as ``agent.toml`` names it: the device's own, or the one under ``--root``
        with ``--paths-under-root`` (a trial on this machine rather than an image)."""
        return str(self.path(device_path)) if self.paths_under_root else device_path


def parse_source(text: str) -> dict[str, Any]:
    """``serial:/dev/ttyUSB0``, ``udp:0.0.0.0:9000``, ``mqtt`` or ``file:/path`` as a
    ``[source]`` table."""
    kind, _, arg = text.partition(":")
    if kind == "serial" and arg:
        return {"type": "serial", "params": {"port": arg}}
    if kind == "udp" and arg.rpartition(":")[2].isdigit():
        host, _, port = arg.rpartition(":")
        return {"type": "udp", "params": {"host": host or "0.0.0.0", "port": int(port)}}
    if kind == "mqtt" and not arg:
        return {"type": "mqtt", "params": {}}
    if kind == "file" and arg:
        return {"type": "file", "params": {"path": arg}}
    raise ConfigError(f"--source {text!r} is invalid; use serial:/dev/ttyUSB0, "
                      "udp:HOST:PORT, mqtt or file:/path")
