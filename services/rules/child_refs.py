"""A child's reference from a national identifier, and a random one for a child without documents.

The reference is `c` + the first 64 bits of HMAC-SHA256, under the deployment's child-reference key,
of the identifier's canonical form (scheme, then digits): every sector holding the key computes the
same reference, and the identifier itself never travels. Pure: no I/O; the key is the caller's
(Settings.child_ref_key). Why this shape: docs/decisions/0017-child-references.md.
"""

import hashlib
import hmac
import secrets
from enum import StrEnum

from stdnum.br import cpf
from stdnum.exceptions import InvalidChecksum, InvalidComponent, ValidationError
from stdnum.ro import cnp

CANONICAL_PREFIX = b"refbus-child-ref/v1\0"
"Names the derivation: a v2 (another canonical form) gives other references, never colliding ones."


class Scheme(StrEnum):
    """A national identifier scheme: country and name, as it enters the canonical form."""

    CNP = "ro.cnp"
    "Romania's Cod Numeric Personal: 13 digits, birth date, county, check digit mod 11."
    IDNP = "md.idnp"
    "Moldova's personal identification number: 13 digits, check digit by weights 7,3,1 mod 10."
    CPF = "br.cpf"
    "Brazil's Cadastro de Pessoas Físicas: 11 digits, two check digits mod 11."


class InvalidIdentifier(ValueError):
    """The identifier is not one of its scheme: the message says which part is wrong (format,
    length, a component, the check digit), never repeating the identifier."""


_LABELS = {Scheme.CNP: "CNP", Scheme.IDNP: "IDNP", Scheme.CPF: "CPF"}
_LENGTHS = {Scheme.CNP: 13, Scheme.IDNP: 13, Scheme.CPF: 11}
_IDNP_WEIGHTS = (7, 3, 1) * 4


def idnp_check_digit(first_twelve: str) -> str:
    """The IDNP's 13th digit: the first twelve weighted 7,3,1,7,3,1,... summed, mod 10 (the same
    rule as the company IDNO, stdnum.md.idno)."""
    return str(sum(w * int(d) for w, d in zip(_IDNP_WEIGHTS, first_twelve, strict=True)) % 10)


def validate(scheme: Scheme, text: str) -> str:
    """The identifier's digits (spaces, dots and dashes dropped), or InvalidIdentifier naming what
    is wrong: its format, its length, an impossible part, or its check digit."""
    label = _LABELS[scheme]
    compact = "".join(ch for ch in text if ch not in " .-")
    if not compact:
        raise InvalidIdentifier(f"invalid {label}: no digits given")
    if not compact.isascii() or not compact.isdigit():
        raise InvalidIdentifier(f"invalid {label}: only digits (and spaces, dots, dashes) are allowed")
    if len(compact) != _LENGTHS[scheme]:
        raise InvalidIdentifier(f"invalid {label}: {_LENGTHS[scheme]} digits expected, got {len(compact)}")
    try:
        match scheme:
            case Scheme.CNP:
                return cnp.validate(compact)
            case Scheme.CPF:
                return cpf.validate(compact)
            case Scheme.IDNP:
                if idnp_check_digit(compact[:12]) != compact[12]:
                    raise InvalidChecksum()
                return compact
    except InvalidChecksum:
        raise InvalidIdentifier(f"invalid {label}: the check digit does not match (a digit mistyped?)") from None
    except InvalidComponent:
        raise InvalidIdentifier(f"invalid {label}: its first digit, birth date or county code is impossible") from None
    except ValidationError:  # stdnum's InvalidFormat past the checks above: e.g. a CPF of zeros
        raise InvalidIdentifier(f"invalid {label}: not a number the scheme issues") from None
    raise AssertionError(scheme)  # every scheme returns above


def canonical(scheme: Scheme, digits: str) -> bytes:
    """What the key is applied to: the scheme is part of it, so a CNP and an IDNP with the same 13
    digits give different references."""
    return CANONICAL_PREFIX + scheme.value.encode() + b"\0" + digits.encode()


def derive(key: bytes, scheme: Scheme, identifier: str) -> str:
    """The child's reference (`c` + 16 hex digits, contracts' ChildRef) from a national identifier;
    InvalidIdentifier for one that is not valid for its scheme."""
    if len(key) < 16:
        raise ValueError("the child-reference key must have at least 128 bits")
    digest = hmac.new(key, canonical(scheme, validate(scheme, identifier)), hashlib.sha256).digest()
    return "c" + digest[:8].hex()


def undocumented() -> str:
    """A fresh random reference for a child without documents: the same form as a derived one, so
    the reference itself does not say that the child has no papers."""
    return "c" + secrets.token_hex(8)
