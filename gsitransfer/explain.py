"""Why the server would accept or refuse a credential, offline (``gsitransfer-admin explain``, SPEC §10).

The chain goes through the server's own judging code, step by step, in the
order the server applies it:

1. OpenSSL's verification against the trusted CAs, RFC 3820 proxies allowed
   (:func:`~gsitransfer.tls.context.chain_failure`: what the server uses to
   judge a connection's chain again after a reload), at ``--at`` or now;
2. the CRLs under ``--crl-policy``
   (:func:`~gsitransfer.tls.context.revocation_refusal`);
3. the identity the handlers see (:func:`~gsitransfer.identity.identity_from_chain`:
   proxies resolved to their user, limited and independent proxies flagged);
4. the CAs' signing policies and namespaces under ``--signing-policy``
   (:func:`~gsitransfer.tls.context.ca_policies`, checked per request);
5. the grid-mapfile (``--gridmap``): the account, or a refusal.

Nothing is copied from the server: each step calls the function the server
calls. The certificate's private key is never needed (an administrator
explains a refusal from the user's public certificate or proxy chain).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509

from .gridmap import GridMapError, load_gridmap
from .identity import (
    POLICY_INDEPENDENT,
    POLICY_INHERIT_ALL,
    POLICY_LIMITED,
    format_dn,
    identity_from_chain,
    proxy_cert_info,
    proxy_policy,
)
from .tls.context import (
    TLSConfigError,
    TrustConfig,
    ca_policies,
    chain_failure,
    load_trust,
    revocation_refusal,
    trust_store,
    verified_chain_of,
)


class ExplainError(ValueError):
    """The question cannot be asked: an unreadable credential or trust configuration (exit 2)."""


@dataclass
class Explanation:
    """The decision, and the facts behind it as (label, text) lines in the order they were found."""

    accepted: bool = True
    reason: str = ""
    facts: list[tuple[str, str]] = field(default_factory=list)

    def refuse(self, reason: str) -> None:
        """The first refusal decides (later steps still add what they can tell)."""
        if self.accepted:
            self.accepted, self.reason = False, reason

    def render(self) -> str:
        """Aligned ``label: text`` lines, the decision first."""
        lines = [("decision", "accepted" if self.accepted else f"refused — {self.reason}"), *self.facts]
        width = max(len(label) for label, _ in lines) + 1
        return "\n".join(f"{label + ':':<{width}} {text}" for label, text in lines) + "\n"


def read_chain(data: bytes, source: str) -> list[x509.Certificate]:
    """Every certificate of a PEM file, in file order (a grid proxy file: proxy, user, CAs; keys skipped)."""
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ExplainError(f"{source}: no PEM certificate in it") from None
    if not chain:
        raise ExplainError(f"{source}: no PEM certificate in it")
    return chain


_POLICY_NAMES = {POLICY_INHERIT_ALL: "inheritAll", POLICY_INDEPENDENT: "independent", POLICY_LIMITED: "limited"}


def _kind(cert: x509.Certificate) -> str:
    info = proxy_cert_info(cert)
    if info is not None:
        policy = proxy_policy(cert)
        return f"proxy (RFC 3820, {_POLICY_NAMES.get(policy or '', policy or 'no policy')})"
    if cert.issuer == cert.subject:
        return "CA (self-signed)"
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "CA"
    except x509.ExtensionNotFound:
        pass
    return "end-entity"


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def explain(
    chain: Sequence[x509.Certificate], trust: TrustConfig, gridmap: str | None = None,
    at: datetime.datetime | None = None,
) -> Explanation:
    """Run ``chain`` (leaf first) through the server's judgement under ``trust`` at ``at`` (default: now)."""
    when = at or datetime.datetime.now(datetime.timezone.utc)
    result = Explanation()
    try:
        material = load_trust(trust)
        policies = ca_policies(material, trust)
    except TLSConfigError as error:
        raise ExplainError(str(error)) from None
    result.facts.append(("trust", f"{material.summary()}, CRL policy {trust.crl_policy}, "
                                  f"signing policy {trust.signing_policy}, at {_when(when)}"))
    for depth, cert in enumerate(chain):
        result.facts.append((f"depth {depth}", f"{_kind(cert)} {format_dn(cert.subject)}, valid "
                                               f"{_when(cert.not_valid_before_utc)} .. {_when(cert.not_valid_after_utc)}"))
    store = trust_store(material)
    failure = chain_failure(store, chain, when)
    if failure is not None:
        result.refuse(f"{failure.reason} (OpenSSL verify error {failure.code}) at depth {failure.depth}: "
                      f"{failure.subject}")
    else:
        # what the server judges next is the chain the handshake verified: up to the trusted CA
        chain = verified_chain_of(store, chain, when)
        result.facts.append(("verified", f"the chain leads to the trusted CA {format_dn(chain[-1].subject)}"))
    revoked = revocation_refusal(chain, material, trust.crl_policy, when)
    if revoked is not None:
        result.refuse(revoked)
    elif material.crls:
        result.facts.append(("crl", "no certificate of the chain is revoked"))
    else:
        result.facts.append(("crl", "no CRL in the trust (CRL policy if-present: not checked)"))
    try:
        token = identity_from_chain(chain)
    except ValueError as error:
        result.refuse(f"no identity: {error}")
        return result
    flags = [name for name, on in (("proxy", token.proxy), ("limited proxy", token.limited_proxy)) if on]
    result.facts.append(("identity", f"{token.dn}" + (f" ({', '.join(flags)})" if flags else "")))
    if token.person != token.dn:
        result.facts.append(("person", f"{token.person} (owner of transfers, quotas)"))
    policy = policies.refusal(tuple(chain))
    if policy is not None:
        result.refuse(policy)
    if gridmap is not None:
        try:
            accounts = load_gridmap(gridmap).lookup(token.dn)
        except (GridMapError, OSError) as error:
            raise ExplainError(f"--gridmap {gridmap}: {error}") from None
        if accounts:
            result.facts.append(("account", f"{accounts[0]} (grid-mapfile {gridmap})"))
        else:
            result.refuse(f"{token.dn} is not in the grid-mapfile {gridmap} (403 on every request)")
    return result


__all__ = ["ExplainError", "Explanation", "explain", "read_chain"]
