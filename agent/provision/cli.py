"""``foreshock device provision`` and ``foreshock device check``: the command lines."""

from __future__ import annotations

from pathlib import Path

import typer

from agent.provision.request import CONFIG, Request
from agent.provision.steps import Provisioner

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Provision and check a device: keys, certificate, config, systemd unit.")


@app.command()
def provision(
    device_id: str = typer.Option(..., "--device-id", help="This device's id (certificate CN)."),
    site: str = typer.Option(..., "--site", help="Site id."),
    broker: str = typer.Option(..., "--broker", help="mqtts://host:8883"),
    root: Path = typer.Option(Path("/"), "--root", help="Install under DIR (SD-card image)."),
    ca_dir: Path | None = typer.Option(None, "--ca-dir", help="Site CA directory on this "
                                                              "machine: sign directly."),
    csr_out: Path | None = typer.Option(None, "--csr-out", help="Offline: write the CSR here."),
    cert_in: Path | None = typer.Option(None, "--cert-in", help="Offline: signed certificate "
                                                                "(+ CA chain) to install."),
    ca_cert: Path | None = typer.Option(None, "--ca-cert", help="Site CA certificate, if not "
                                                                "in --cert-in."),
    model_key: Path | None = typer.Option(None, "--model-key", help="Model-signing public key "
                                                                    "to pin."),
    no_systemd: bool = typer.Option(False, "--no-systemd", help="Do not install the unit."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be written."),
    source: str | None = typer.Option(None, "--source", help="serial:/dev/ttyUSB0 | "
                                      "udp:HOST:PORT | mqtt | file:/path [default: keep the "
                                      "config's, else serial:/dev/ttyUSB0]"),
    paths_under_root: bool = typer.Option(
        False, "--paths-under-root", help="With --root: agent.toml names the files under DIR "
        "(a trial on this machine, run with `foreshock agent run --config`), not the "
        "device's own /etc paths."),
) -> None:
    """Give this device its key, certificate, config and service (idempotent, resumable)."""
    req = Request(device_id, site, broker, root, ca_dir, csr_out, cert_in, ca_cert, model_key,
                  not no_systemd, dry_run, source, paths_under_root)
    done = Provisioner(req, echo=typer.echo).run()
    if dry_run:
        typer.echo("dry run: nothing was written")
    elif done:
        typer.echo(f"provisioned {site}/{device_id}; verify with: {check_command(req)}")


def check_command(req: Request) -> str:
    """The ``foreshock device check`` command line that fits how ``req`` provisioned."""
    extra = "" if req.systemd else " --no-systemd"
    if req.paths_under_root:
        return f"foreshock device check --config {req.path(CONFIG)}{extra}"
    root = f" --root {req.root}" if req.root != Path("/") else ""
    return f"foreshock device check{root}{extra}"


@app.command()
def check(
    root: Path = typer.Option(Path("/"), "--root", help="Check an image under DIR."),
    config: Path | None = typer.Option(None, "--config", help="[default: <root>" + CONFIG
                                       + "]"),
    no_systemd: bool = typer.Option(False, "--no-systemd", help="Skip the service check."),
    timeout_s: float = typer.Option(5.0, "--timeout-s", help="Broker connection timeout."),
) -> None:
    """Check config, certificate, clock, broker (TLS) and service; exit 1 on a failure."""
    from agent.provision_check import run_checks

    results = run_checks(root, config or root / CONFIG.lstrip("/"), not no_systemd, timeout_s)
    for r in results:
        typer.echo(r.line())
    if any(r.status == "FAIL" for r in results):
        raise typer.Exit(1)
