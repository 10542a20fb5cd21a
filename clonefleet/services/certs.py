"""`[services.certs]`: how the fleet's one TLS certificate is obtained (ACME, DNS-01).

The certificate itself is made on the controller (`clonefleet.certs`) and stored in the
`SecretStore` under `FLEET` as `tls_chain` and `tls_key`; the deploys that serve TLS read it
from there, so this service has no host data of its own.
"""

from __future__ import annotations

from collections.abc import Mapping

from clonefleet.providers.registry import Setting

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
KEY_TYPES = ("ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096")

SETTINGS: Mapping[str, Setting] = {
    "directory_url": Setting(str, "the ACME server's directory URL", default=LETS_ENCRYPT),
    "email": Setting(str, "contact address registered with the ACME account (expiry "
                          "notices)", default=""),
    "ca_bundle": Setting(str, "PEM file of the CA that signs the ACME server's own HTTPS "
                              "certificate (a private or test ACME server); empty: the "
                              "system's", default=""),
    "renew_before_days": Setting(int, "renew when the certificate expires in fewer days "
                                      "than this", default=30),
    "key_type": Setting(str, "the certificate's key", default="ecdsa-p256", choices=KEY_TYPES),
    "extra_names": Setting(list, "more host names for the certificate, under the fleet's "
                                 "domain (its own DNS servers answer the challenges)",
                           default=()),
    "dns_wait_seconds": Setting(int, "how long every node's DNS server may take to answer a "
                                     "published challenge record", default=60),
}
