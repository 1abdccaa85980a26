"""The VAPID key of this deployment, derived from EPM_MASTER_KEY. No I/O.

Derived, not generated: every replica and every rebuild has the same key
without an event to carry it (HKDF of the master key, purpose
``notify-svc vapid v1``, reduced to a P-256 scalar). Browsers subscribe with
its public half (``vapid_public_key``); rotating the master key changes it,
and push channels must then be subscribed again.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from epm_service.secretbox import SecretBox
from py_vapid import Vapid  # type: ignore[import-untyped]

PURPOSE = "notify-svc vapid v1"
# order of the P-256 group
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def vapid_key(box: SecretBox) -> ec.EllipticCurvePrivateKey:
    # 48 bytes reduced mod n-1: the bias is below 2**-128.
    scalar = int.from_bytes(box.derive(PURPOSE, 48), "big") % (_N - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def vapid_signer(box: SecretBox) -> Vapid:
    return Vapid(private_key=vapid_key(box))


def application_server_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The public key as browsers want it for ``pushManager.subscribe``: base64url, no padding."""
    raw = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
