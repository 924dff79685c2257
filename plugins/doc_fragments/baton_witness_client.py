"""Documentation shared by Baton's modules that talk to the witness (etcd)."""


class ModuleDocFragment:
    """The `client` option: how a module reaches and logs in to one of Baton's etcd clusters."""

    DOCUMENTATION = r"""
options:
  client:
    description:
      - How to reach the witness - TLS with the Baton CA, the controller's client certificate
        and key, and the controller's etcd user (the witness role's C(witness_controller_client)).
      - Empty - plain HTTP without a login (an etcd without TLS and authentication).
    type: dict
    default: {}
    suboptions:
      ca_file:
        description: The Baton CA's certificate (PEM).
        type: str
        default: ""
      cert_file:
        description: The client's certificate (PEM, issued by the Baton CA, no CommonName).
        type: str
        default: ""
      key_file:
        description: The client's private key (PEM).
        type: str
        default: ""
      key_password:
        description: The private key's passphrase, when it is encrypted.
        type: str
        default: ""
      username:
        description: The etcd user.
        type: str
        default: ""
      password:
        description: The etcd user's password.
        type: str
        default: ""
"""
