"""Multi-party DASH: pooled regression from masked sums of additive sufficient statistics.

Each party computes its additive statistics (sizes independent of its sample count), encodes them
as fixed-point numbers in the ring Z_{2^128} (:mod:`.encoding`), adds pairwise masks that cancel
in the sum over all parties and a private self-mask (:mod:`.masking`, seeds from per-round X25519
key agreement: :mod:`.rounds`) and publishes the masked, Ed25519-signed share to a shared
exchange location (:mod:`.exchange`). Once the coordinator has fixed the round's survivors, each
survivor reveals what removes its masks; a combiner adds the survivors' shares in the ring,
unmasks and decodes the pooled statistics, from which the pooled scan follows.

Threat model: see :mod:`.rounds` (what each step checks against a party, coordinator or exchange
writer who does not follow the protocol) and README's table. Out of scope: parties that lie about
their own data (they can always bias the sum); collusion of all parties but one (from the sum and
their own data they recover the remaining party's statistics: inherent to revealing the sum).
This package knows only arrays, manifests, keys and the exchange; composing it with Spark and
files happens in :mod:`dash_spark.studies.study`.
"""

from __future__ import annotations

from ..errors import ProtocolError


__all__ = ["ProtocolError"]
