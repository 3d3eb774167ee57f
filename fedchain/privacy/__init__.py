"""Privacy: secure aggregation's pure arithmetic and cryptography (SPEC.md §14).

`quantize`: updates ⇄ integers mod 2^k; `prg`: AES-256-CTR and HKDF; `shamir`: secret sharing
over GF(2^256 + 297); `secagg`: round keys, neighbours, masks, encrypted shares, unmasking.
"""
