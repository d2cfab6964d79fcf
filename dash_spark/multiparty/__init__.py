"""Multi-party DASH: pooled regression from masked sums of additive sufficient statistics.

Each party computes its additive statistics (sizes independent of its sample count), encodes them
as fixed-point numbers in the ring Z_{2^128} (:mod:`.encoding`), adds pairwise masks that cancel
in the sum over all parties (:mod:`.masking`, seeds from X25519 key agreement) and publishes the
masked, Ed25519-signed share to a shared exchange location (:mod:`.exchange`). A combiner adds all
shares in the ring and decodes the pooled statistics, from which the pooled scan follows.

Threat model (secure aggregation of one round):

- parties and combiner are honest-but-curious: they follow the protocol but may inspect what
  they see. The combiner (and anyone who can read the exchange) learns only the ring sum of the
  statistics over all parties, plus the share headers (statistic names and shapes, the declared
  variant-list hash and phenotype/covariate names);
- each party's published share alone is indistinguishable from uniform random ring elements;
- out of scope: malicious parties that lie about their own data (they can always bias the sum);
  collusion of all parties but one (from the sum and their own data they recover the remaining
  party's statistics: that is inherent to revealing the sum); dropouts: a round needs a share
  from every party in the manifest, and a party that drops out requires a new round (new round
  id, hence fresh masks) without it. Signatures stop forged, tampered and replayed shares.
"""

from __future__ import annotations

from ..errors import DashError


class ProtocolError(DashError):
    """A multi-party protocol violation: bad or missing signature, missing party, replayed share,
    or parties that disagree on what they computed."""


__all__ = ["ProtocolError"]
