"""The site certificate authority: device, gateway and broker certificates, and the CRL.

A plant runs one small CA on the gateway host (or an offline machine). It signs device
certificates from CSRs (the device key never leaves the device), issues the broker's server
certificate and the gateway's client identity, and revokes certificates into a CRL that
mosquitto checks on every connection. The model-signing key pair (ed25519, see
:mod:`foreshock.bundle`) is generated alongside but kept in its own directory, so the CA key
and the model key can be guarded (or moved offline) separately.

Layout (directories 0700, private keys 0600)::

    <ca-dir>/private/ca.key           CA private key (EC P-256)
    <ca-dir>/ca.crt                   self-signed CA certificate (public)
    <ca-dir>/crl.pem                  certificate revocation list (public)
    <ca-dir>/index.json               site and every issued certificate
    <ca-dir>/issued/<serial>.crt      copies of issued certificates
    <ca-dir>/identities/<name>/       key.pem + cert.pem made here (broker server, gateway)
    <ca-dir>/model-signing.pub        public copy of the model-signing key, for provisioning
    <signing-dir>/model-signing.key   model-signing private key (default <ca-dir>/../model-signing)

Identity names: a device certificate's CN is its device id (``foreshock.topics.ID_RE``), which
mosquitto uses as the username (ACL ``%u``). Role identities (gateway, control-room viewer)
start with ``_`` so no device id can ever collide with them.

The package holds :mod:`gateway.ca.authority` (the CA directory, :class:`SiteCa`),
:mod:`gateway.ca.pem` (keys, PEM and atomic file writes) and :mod:`gateway.ca.cli` (the
``foreshock gateway ca`` commands); every name is importable from here.
"""

from gateway.ca.authority import (
    CA_DAYS,
    CLOCK_SKEW,
    CRL_DAYS,
    DEFAULT_CA_DIR,
    DEVICE_DAYS,
    ROLE_NAME_RE,
    Role,
    SiteCa,
)
from gateway.ca.cli import (
    CA_DIR,
    ca_app,
    crl_cmd,
    init_cmd,
    issue_cmd,
    list_cmd,
    revoke_cmd,
    sign_cmd,
)
from gateway.ca.pem import cert_pem, key_pem, new_key, write_private, write_public

__all__ = [
    "CA_DAYS", "CA_DIR", "CLOCK_SKEW", "CRL_DAYS", "DEFAULT_CA_DIR", "DEVICE_DAYS",
    "ROLE_NAME_RE", "Role", "SiteCa", "ca_app", "cert_pem", "crl_cmd", "init_cmd", "issue_cmd",
    "key_pem", "list_cmd", "new_key", "revoke_cmd", "sign_cmd", "write_private", "write_public",
]
