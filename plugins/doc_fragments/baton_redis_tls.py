"""Documentation shared by Baton's modules that talk to Redis or Sentinel."""


class ModuleDocFragment:
    """The `tls_ca_file` option."""

    DOCUMENTATION = r"""
options:
  tls_ca_file:
    description:
      - The Baton CA's certificate (PEM); Redis and Sentinel are then spoken to over TLS and
        each server's certificate is checked against the address connected to. Empty - plain
        TCP (a deployment before TLS).
    type: str
    default: ""
"""
