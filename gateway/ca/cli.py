"""``foreshock gateway ca``: init, sign, issue, revoke, crl and list on a CA directory."""

from __future__ import annotations

from pathlib import Path

import typer

from foreshock.errors import ConfigError
from gateway.ca.authority import CA_DAYS, CRL_DAYS, DEFAULT_CA_DIR, DEVICE_DAYS, SiteCa
from gateway.ca.pem import cert_pem, write_public

ca_app = typer.Typer(no_args_is_help=True, add_completion=False,
                     help="Site certificate authority: init, sign device CSRs, revoke, list.")
CA_DIR = typer.Option(DEFAULT_CA_DIR, "--ca-dir", envvar="FORESHOCK_CA_DIR",
                      help="CA directory (keep it 0700, on the gateway or an offline host).")


@ca_app.command("init")
def init_cmd(
    site: str = typer.Option(..., "--site", help="Site id the CA serves."),
    ca_dir: Path = CA_DIR,
    host: list[str] = typer.Option(["localhost", "127.0.0.1"], "--host",
                                   help="Broker host names / IPs for its server certificate."),
    signing_dir: Path | None = typer.Option(None, "--signing-dir",
                                            help="Model-signing key directory "
                                                 "[default: <ca-dir>/../model-signing]."),
    days: int = typer.Option(CA_DAYS, "--days", help="CA certificate validity."),
) -> None:
    """Create the CA, the CRL, the broker and gateway identities and the model-signing key."""
    for line in SiteCa(ca_dir).init(site, host, signing_dir, days):
        typer.echo(line)


@ca_app.command("sign")
def sign_cmd(
    csr: Path = typer.Argument(..., help="Device CSR (from `foreshock device provision "
                                         "--csr-out`)."),
    ca_dir: Path = CA_DIR,
    out: Path | None = typer.Option(None, "--out", help="Certificate file [default: CSR "
                                                        "with .crt]; holds device cert + CA."),
    days: int = typer.Option(DEVICE_DAYS, "--days", help="Certificate validity in days."),
) -> None:
    """Sign a device CSR; the output holds the device certificate followed by the CA."""
    try:
        csr_pem = csr.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read CSR {csr}: {exc}") from None
    site_ca = SiteCa(ca_dir)
    cert = site_ca.sign_csr(csr_pem, days)
    target = out or csr.with_suffix(".crt")
    write_public(target, cert_pem(cert) + site_ca.cert_path.read_bytes())
    typer.echo(f"signed {cert.subject.rfc4514_string()} serial {cert.serial_number:x} "
               f"until {cert.not_valid_after_utc:%Y-%m-%d} -> {target}")


@ca_app.command("issue")
def issue_cmd(
    name: str = typer.Argument(..., help="Identity name: '_gateway2', '_viewer', or 'server'."),
    role: str = typer.Option("gateway", "--role", help="gateway | viewer | server"),
    host: list[str] = typer.Option([], "--host", help="Server certificate host names / IPs."),
    ca_dir: Path = CA_DIR,
    days: int = typer.Option(DEVICE_DAYS, "--days", help="Certificate validity in days."),
) -> None:
    """Make a key + certificate here for a gateway instance, a viewer or the broker."""
    if role not in ("gateway", "viewer", "server"):
        raise ConfigError(f"--role {role!r} is not allowed; use gateway, viewer or server")
    out = SiteCa(ca_dir).issue(name, role, host, days)  # type: ignore[arg-type]
    typer.echo(f"issued {role} identity {name} -> {out}/key.pem, cert.pem, ca.crt")


@ca_app.command("revoke")
def revoke_cmd(
    target: str = typer.Argument(..., help="Serial (hex, see `list`) or CN / device id."),
    ca_dir: Path = CA_DIR,
    crl_out: Path | None = typer.Option(None, "--crl-out", help="Also copy the CRL here "
                                                                "(the broker's crlfile)."),
) -> None:
    """Revoke certificates and rewrite the CRL (restart mosquitto to load it)."""
    site_ca = SiteCa(ca_dir)
    serials = site_ca.revoke(target)
    if crl_out:
        write_public(crl_out, site_ca.crl_path.read_bytes())
    typer.echo(f"revoked {', '.join(serials)}; CRL {crl_out or site_ca.crl_path}")
    typer.echo("hint: copy the CRL to the broker's crlfile and restart mosquitto")


@ca_app.command("crl")
def crl_cmd(ca_dir: Path = CA_DIR,
            days: int = typer.Option(CRL_DAYS, "--days", help="CRL validity in days.")) -> None:
    """Re-issue the CRL before it expires (an expired CRL locks every device out)."""
    typer.echo(f"wrote {SiteCa(ca_dir).write_crl(days)}")


@ca_app.command("list")
def list_cmd(ca_dir: Path = CA_DIR) -> None:
    """List issued certificates: serial, role, CN, expiry, revocation."""
    site_ca = SiteCa(ca_dir)
    typer.echo(f"site {site_ca.site}  CA {site_ca.cert_path}")
    for c in site_ca.entries():
        state = f"revoked {c['revoked'][:10]}" if c["revoked"] else "valid"
        typer.echo(f"{c['serial']:<40} {c['role']:<8} {c['cn']:<24} "
                   f"until {c['not_after'][:10]}  {state}")
