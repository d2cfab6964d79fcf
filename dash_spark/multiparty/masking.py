"""Pairwise additive masks that cancel in the sum over all parties, and private self-masks
(secure aggregation with double masking, Bonawitz et al. 2017).

Every pair of parties ``{p, q}`` shares a 32-byte seed: the X25519 shared secret of their keys
(per round, the parties' ephemeral keys: :mod:`.rounds`), expanded with HKDF-SHA256 (salt
``sha256("dash-spark|<study>|<round>|<manifest digest>")``, info ``"pair|<min(p,q)>|<max(p,q)>"``),
so that the seed is unique per study, round, manifest content and pair and the same for both
members. A party's self-mask comes from a private random seed of its own (HKDF info
``"self|<statistic>"``); it is revealed only for a round whose survivors include the party. Per statistic, HKDF derives a key (info ``"stat|<name>"``) that ChaCha20
expands into a stream of ring elements (16 little-endian bytes each: ``lo``, ``hi``); its block
counter makes the stream seekable, so rows of a statistic are masked wherever they are computed,
from their offset (:class:`StatMasker`: a party's Spark tasks get these per-statistic keys only). The party
at the lower position of the pair (positions: index in the sorted party list of the manifest)
adds the stream, the other subtracts it, so all masks cancel in the ring sum of the shares.

Threat model (honest-but-curious parties and combiner): a share alone, or any set of shares
short of all of them, is uniform in the ring; only the sum of all shares is revealed. The
masks between two parties are known to both of them, so all parties but one colluding (with
the combiner) recover the remaining party's values; that is out of scope, as are parties lying
about their own data. A dropped party's pair masks are removed with the seeds its partners reveal
(:func:`unmask_sum`); its self-mask keeps its own share hidden. Never re-publish different values
under the same seeds, since two shares masked with the same stream reveal their difference: the
ledger of :mod:`.rounds` refuses it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import InputError
from . import ProtocolError
from .encoding import add_into, check_encoded, in_slices
from .keys import PrivateKeys, check_party_name

_NONCE = bytes(16)  # the ChaCha20 key is unique per (pair, study, round, statistic); bytes 0-3: block counter
_CHUNK_WORDS = 1 << 16  # ring elements generated per keystream chunk in mask_share
STAT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_stat_name(name: object, *, where: str = "statistic") -> str:
    """A statistic name usable as a file name and HKDF label: ``[A-Za-z0-9][A-Za-z0-9_.-]*``."""
    if not isinstance(name, str) or not STAT_NAME_RE.fullmatch(name):
        raise InputError(f"{where}: invalid statistic name; expected letters, digits, '_', '.' or '-' "
                         f"starting with a letter or digit, found {name!r}. Rename the statistic")
    return name


def _hkdf(secret: bytes, *, salt: bytes | None, info: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info.encode("utf-8")).derive(secret)


def round_salt(study: str, round_id: str, manifest_digest: str = "") -> bytes:
    """``sha256("dash-spark|<study>|<round_id>|<manifest digest>")``: the HKDF salt of a round's pair
    seeds (binding the manifest's whole content: roster, settings, encoding)."""
    return hashlib.sha256(f"dash-spark|{study}|{round_id}|{manifest_digest}".encode("utf-8")).digest()


def pairwise_seed(my_private: PrivateKeys | X25519PrivateKey | bytes, their_public: bytes, *, study: str,
                  round_id: str, me: str, them: str, manifest_digest: str = "") -> bytes:
    """The 32-byte mask seed shared by parties ``me`` and ``them`` in one study round.

    ``my_private``: the party's :class:`PrivateKeys` (or its X25519 private key, object or raw
    32 bytes); ``their_public``: the other party's raw 32-byte X25519 public key.
    """
    check_party_name(me, where="pairwise_seed")
    check_party_name(them, where="pairwise_seed")
    if me == them:
        raise ProtocolError(f"pairwise_seed: party {me!r} paired with itself; expected two different "
                            f"parties, found {me!r} twice. Check the manifest's party list")
    if isinstance(my_private, PrivateKeys):
        if my_private.party != me:
            raise ProtocolError(f"pairwise_seed: private keys belong to another party; expected {me!r}, "
                                f"found {my_private.party!r}. Load the key file of party {me!r}")
        key = my_private.x25519
    elif isinstance(my_private, X25519PrivateKey):
        key = my_private
    else:
        try:
            key = X25519PrivateKey.from_private_bytes(bytes(my_private))
        except (TypeError, ValueError):
            raise InputError(f"pairwise_seed: private key of party {me!r} is invalid; expected 32 raw "
                             "bytes or PrivateKeys, found something else. Load it with load_private") from None
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(bytes(their_public)))
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"pairwise_seed: X25519 key of party {them!r} is unusable; expected a valid "
                            f"public key, found an error ({exc}). Ask {them!r} for its .pub file again") from None
    lo, hi = sorted((me, them))
    return _hkdf(shared, salt=round_salt(study, round_id, manifest_digest), info=f"pair|{lo}|{hi}")


def pairwise_seeds(my_private: PrivateKeys | X25519PrivateKey, public_x25519: Mapping[str, bytes], *, study: str,
                   round_id: str, me: str, manifest_digest: str = "") -> dict[str, bytes]:
    """Seeds of ``me`` with every other party of ``{party: raw X25519 public key}``."""
    return {p: pairwise_seed(my_private, pub, study=study, round_id=round_id, me=me, them=p,
                             manifest_digest=manifest_digest)
            for p, pub in public_x25519.items() if p != me}


def stat_key(seed: bytes, stat_name: str, kind: str = "stat") -> bytes:
    """The keystream key of statistic ``stat_name`` from a pair seed (``kind="stat"``) or a self
    seed (``"self"``): one-way, so revealing it reveals no other statistic's mask."""
    return _stat_key(seed, stat_name, kind)


def _stat_key(seed: bytes, stat_name: str, kind: str = "stat") -> bytes:
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise InputError(f"mask for statistic {stat_name!r}: seed is not 32 bytes; expected a seed from "
                         "pairwise_seed, found something else. Derive seeds with pairwise_seed")
    check_stat_name(stat_name, where="mask_stream")
    return _hkdf(seed, salt=None, info=f"{kind}|{stat_name}")


def _keystream(key: bytes, offset_words: int = 0):
    """An encryptor whose ChaCha20 stream of ``key`` starts at ring element ``offset_words`` (the
    32-bit block counter starts at the 64-byte block holding it; the bytes before it are skipped)."""
    block, skip = divmod(16 * int(offset_words), 64)
    if block >= 1 << 32:
        raise InputError(f"mask stream: offset {offset_words} is beyond the stream's 2^32 blocks; split the "
                         "statistic")
    enc = Cipher(algorithms.ChaCha20(key, block.to_bytes(4, "little") + _NONCE[4:]), mode=None).encryptor()
    if skip:
        enc.update(bytes(skip))
    return enc


def _stat_encryptor(seed: bytes, stat_name: str, kind: str = "stat", offset_words: int = 0):
    return _keystream(_stat_key(seed, stat_name, kind), offset_words)


def _words(encryptor, n_words: int) -> np.ndarray:
    raw = encryptor.update(bytes(16 * n_words))
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64, copy=False).reshape(n_words, 2)


def mask_stream(seed: bytes, stat_name: str, n_words: int, offset_words: int = 0) -> np.ndarray:
    """The mask of statistic ``stat_name`` from a pair seed: ``n_words`` ring elements ``(n_words, 2)``,
    from element ``offset_words`` of the statistic on."""
    if isinstance(n_words, bool) or not isinstance(n_words, (int, np.integer)) or n_words < 0:
        raise InputError(f"mask_stream: invalid length for statistic {stat_name!r}; expected a "
                         f"non-negative integer, found {n_words!r}. Pass the statistic's element count")
    return _words(_stat_encryptor(seed, stat_name, offset_words=offset_words), int(n_words))


def _check_parties(me: str, parties: Sequence[str]) -> list[str]:
    parties = list(parties)
    for p in parties:
        check_party_name(p, where="mask_share")
    if parties != sorted(set(parties)):
        raise ProtocolError(f"mask_share: party list is not sorted and unique; expected {sorted(set(parties))}, "
                            f"found {parties}. Pass the manifest's sorted party names")
    if me not in parties:
        raise ProtocolError(f"mask_share: party {me!r} is not in the party list; expected one of "
                            f"{', '.join(parties)}, found {me!r}. Use the manifest of the party's study")
    return parties


def self_mask_stream(seed: bytes, stat_name: str, n_words: int) -> np.ndarray:
    """A party's self-mask of statistic ``stat_name`` from its private round seed."""
    return _words(_stat_encryptor(seed, stat_name, "self"), int(n_words))


def pair_sign(me: str, other: str, parties: Sequence[str]) -> bool:
    """Whether ``me`` subtracts (True) or adds (False) the stream it shares with ``other``."""
    order = sorted(parties)
    return order.index(me) > order.index(other)


@dataclass(frozen=True)
class StatMasker:
    """What masks one statistic of one party: its keystream keys, each with whether it is subtracted.

    Derived from the round's seeds for this statistic only (HKDF, one-way): an executor that masks
    rows of the statistic gets these keys, never the seeds behind them, so it can produce no other
    statistic's mask and no other round's."""

    stat_name: str
    keys: tuple[tuple[bytes, bool], ...]

    def apply(self, values_encoded: np.ndarray, offset_words: int = 0) -> np.ndarray:
        """Mask, in place, a writable C-contiguous ring array holding the statistic's elements
        ``offset_words`` onwards (rows of a larger statistic: offset = first row x row width)."""
        flat = values_encoded.reshape(-1, 2)
        n = flat.shape[0]
        for key, subtract in self.keys:
            enc = _keystream(key, offset_words)
            for start in range(0, n, _CHUNK_WORDS):
                stop = min(n, start + _CHUNK_WORDS)
                add_into(flat[start:stop], _words(enc, stop - start), subtract=subtract)
        return values_encoded


def stat_masker(stat_name: str, *, me: str, parties: Sequence[str], seeds: Mapping[str, bytes],
                self_seed: bytes | None = None) -> StatMasker:
    """The :class:`StatMasker` of party ``me``'s statistic ``stat_name``: the streams shared with
    higher-positioned parties are added, those shared with lower-positioned ones subtracted
    (positions in the sorted list ``parties``), and its self-mask stream added when ``self_seed``
    is given."""
    check_stat_name(stat_name, where="mask_share")
    parties = _check_parties(me, parties)
    missing = [p for p in parties if p != me and p not in seeds]
    if missing:
        raise ProtocolError(f"mask_share: party {me!r} lacks seeds with {', '.join(missing)}; expected a "
                            f"seed with every other party, found {len(parties) - 1 - len(missing)} of "
                            f"{len(parties) - 1}. Derive them with pairwise_seeds from the manifest")
    pos = parties.index(me)
    keys = [(_stat_key(seeds[other], stat_name), pos > q) for q, other in enumerate(parties) if other != me]
    if self_seed is not None:
        keys.append((_stat_key(self_seed, stat_name, "self"), False))
    return StatMasker(stat_name, tuple(keys))


def mask_share(values_encoded: np.ndarray, stat_name: str, *, me: str, parties: Sequence[str],
               seeds: Mapping[str, bytes], inplace: bool = False, self_seed: bytes | None = None) -> np.ndarray:
    """Mask party ``me``'s encoded statistic with :func:`stat_masker`'s streams.

    The ring sum over all parties of their masked shares equals the sum of the unmasked values plus
    the self-masks (removed once their seeds are revealed: :func:`unmask_sum`).
    ``inplace``: mask ``values_encoded`` itself (a writable C-contiguous array) instead of a copy.
    """
    check_encoded(values_encoded, where=f"mask_share of statistic {stat_name!r}")
    masker = stat_masker(stat_name, me=me, parties=parties, seeds=seeds, self_seed=self_seed)
    if inplace and not (values_encoded.flags.c_contiguous and values_encoded.flags.writeable):
        raise InputError(f"mask_share of statistic {stat_name!r}: cannot mask in place; expected a writable "
                         "C-contiguous array, found a view or a read-only array. Pass inplace=False")
    out = values_encoded if inplace else np.array(values_encoded, dtype=np.uint64, order="C")
    return masker.apply(out)


def key_stream(key: bytes, n_words: int) -> np.ndarray:
    """The first ``n_words`` ring elements ``(n_words, 2)`` of a keystream key (:func:`stat_key`)."""
    return _words(_keystream(key), int(n_words))


def unmask_sum(total: np.ndarray, stat_name: str, *, parties: Sequence[str], self_seeds: Mapping[str, bytes],
               dropped_pair_seeds: Mapping[tuple[str, str], bytes], threads: int | None = None) -> np.ndarray:
    """Remove from the ring sum ``total`` of the survivors' shares (in place) the survivors' self-masks
    (``self_seeds``: ``{survivor: seed}``) and the masks each survivor shared with a dropped party
    (``dropped_pair_seeds``: ``{(survivor, dropped): seed}``); ``parties``: the round's whole roster.
    Large statistics are split into ``threads`` slices (default: the CPUs, at most 4) that generate
    their streams from their own offsets at once (ChaCha20 and the ring kernel release the GIL)."""
    flat = total.reshape(-1, 2)
    n = flat.shape[0]
    keys = [(_stat_key(seed, stat_name, "self"), True) for seed in self_seeds.values()]
    for (survivor, dropped), seed in dropped_pair_seeds.items():
        # the survivor added the stream if it comes first in the pair, else subtracted it: undo that
        keys.append((_stat_key(seed, stat_name), not pair_sign(survivor, dropped, parties)))
    masker = StatMasker(stat_name, tuple(keys))
    in_slices(n, min(threads or os.cpu_count() or 1, 4, max(1, n // _CHUNK_WORDS)),
              lambda a, b: masker.apply(flat[a:b], a))
    return total


__all__ = ["StatMasker", "check_stat_name", "mask_share", "mask_stream", "pair_sign", "pairwise_seed", "pairwise_seeds",
           "key_stream", "round_salt", "self_mask_stream", "stat_key", "stat_masker", "unmask_sum"]
