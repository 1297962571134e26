"""A referral's content: what the receiver needs to act, readable by the parties alone.

`ReferralContent` is the clear text a sector system sends with its `refer` command and gets back
through its gateway; it never travels or rests in the log as such. The log holds `SealedContent`
(on `referral.requested`): the same content under AES-256-GCM with a data key of the child's that
only the referral's two sectors and the auditors can unwrap (services/privacy/,
docs/decisions/0021-sealed-content.md). Everything else about a referral stays clear metadata.
"""

from datetime import date
from typing import Annotated, Literal

import msgspec

NAME_MAX = 200
CONTACT_MAX = 200
ADDRESS_MAX = 300
NOTE_MAX = 2000


class ReferralContent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """What the receiving sector needs to act on a referral. Every field optional, every one bounded."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_MAX)] | None = None
    "The child's name as the referring sector records it."
    date_of_birth: date | None = None
    guardian_contact: Annotated[str, msgspec.Meta(min_length=1, max_length=CONTACT_MAX)] | None = None
    "How to reach the guardian: a name and a telephone number or an e-mail address."
    address: Annotated[str, msgspec.Meta(min_length=1, max_length=ADDRESS_MAX)] | None = None
    note: Annotated[str, msgspec.Meta(min_length=1, max_length=NOTE_MAX)] | None = None
    "The referring worker's free-text note to the receiver."


KeyId = Annotated[
    str, msgspec.Meta(pattern=r"^[0-9a-f]{16}$", max_length=16, description="Which of the child's data keys.")
]
SEALED_MAX = 4 * (NAME_MAX + CONTACT_MAX + ADDRESS_MAX + NOTE_MAX) + 256
"Four bytes per character (UTF-8's widest) of every field, the framing, the tag: the largest sealing."


class SealedContent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A `ReferralContent` under AES-256-GCM. The associated data binds it to its event (child,
    referral id, event id, key id): moved onto another event it does not open. The signature of the
    event covers these bytes, so erasing the key leaves a history that still verifies."""

    key_id: KeyId
    nonce: Annotated[bytes, msgspec.Meta(min_length=12, max_length=12)]
    ciphertext: Annotated[bytes, msgspec.Meta(min_length=16, max_length=SEALED_MAX)]


class ContentView(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A referral's content as its gateway shows it to one reader. `clear`: here it is; `erased`: the
    child's keys were destroyed (`refbus erase`), so nobody can read it any more; `withheld`: this
    reader holds no key for it (not a party to the referral)."""

    state: Literal["clear", "erased", "withheld"]
    content: ReferralContent | None = None
