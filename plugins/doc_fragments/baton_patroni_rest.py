"""Documentation shared by Baton's modules that talk to Patroni's REST API."""


class ModuleDocFragment:
    """The `restapi_ca_file` option."""

    DOCUMENTATION = r"""
options:
  restapi_ca_file:
    description:
      - The Baton CA's certificate (PEM); Patroni's REST API is then spoken over HTTPS and
        each member's certificate is checked. Empty - plain HTTP.
    type: str
    default: ""
"""
