"""Private keys and certificate requests, made in memory with `cryptography`.

Keys leave this module only as PEM strings for the age-encrypted `SecretStore`; nothing here
writes a file.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

CURVES = {"ecdsa-p256": ec.SECP256R1, "ecdsa-p384": ec.SECP384R1}
RSA_BITS = {"rsa-2048": 2048, "rsa-3072": 3072, "rsa-4096": 4096}


def new_key(key_type: str) -> PrivateKeyTypes:
    """A fresh private key of `key_type` (one of `services.certs.KEY_TYPES`)."""
    if key_type in CURVES:
        return ec.generate_private_key(CURVES[key_type]())
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS[key_type])


def key_pem(key: PrivateKeyTypes) -> str:
    """PKCS#8 PEM, unencrypted: it is only ever stored inside an age-encrypted secret."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def load_key(pem: str) -> PrivateKeyTypes:
    return serialization.load_pem_private_key(pem.encode(), password=None)


def key_type_of(public_key: object) -> str:
    """The `key_type` setting that names this key's kind ("" for others)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        for name, curve in CURVES.items():
            if isinstance(public_key.curve, curve):
                return name
    if isinstance(public_key, rsa.RSAPublicKey):
        for name, bits in RSA_BITS.items():
            if public_key.key_size == bits:
                return name
    return ""
