"""Child references from national identifiers (services/rules/child_refs.py): validation by format
and check digit, the keyed derivation, and the random reference of a child without documents."""

import os
import re
import subprocess
import sys
from datetime import date, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refbus.contracts.events import ChildRef
from refbus.services.rules.child_refs import InvalidIdentifier, Scheme, derive, idnp_check_digit, undocumented, validate

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CHILD_PATTERN = re.compile(ChildRef.__metadata__[0].pattern)  # type: ignore[attr-defined]
# Checked by hand against each scheme's public description (synthetic numbers, nobody's).
CNP = "5100523400011"  # a boy born 2010-05-23, county 40 (Bucharest), serial 001; remainder 10, written 1
CPF = "529.982.247-25"
IDNP = "2002000000008"


def _cnp_check(first_twelve: str) -> str:
    # Romania: weights 279146358279, sum mod 11, a remainder of 10 written as 1.
    remainder = sum(int(w) * int(d) for w, d in zip("279146358279", first_twelve, strict=True)) % 11
    return "1" if remainder == 10 else str(remainder)


def _cpf_checks(first_nine: str) -> str:
    # Brazil: two mod-11 check digits, weights 10..2 then 11..2; a remainder below 2 gives 0.
    digits = first_nine
    for start in (10, 11):
        total = sum(w * int(d) for w, d in zip(range(start, 1, -1), digits, strict=True))
        digits += str(0 if total % 11 < 2 else 11 - total % 11)
    return digits[9:]


valid_idnps = st.text("0123456789", min_size=12, max_size=12).map(lambda body: body + idnp_check_digit(body))
valid_cpfs = st.text("0123456789", min_size=9, max_size=9).filter(lambda b: b != "000000000").map(
    lambda body: body + _cpf_checks(body))
valid_cnps = st.builds(
    lambda sex, born, county, serial: _with_cnp_check(f"{sex}{born:%y%m%d}{county:02d}{serial:03d}"),
    st.sampled_from("56"), st.dates(date(2000, 1, 1), date(2025, 12, 31)), st.integers(1, 46), st.integers(1, 999),
)


def _with_cnp_check(first_twelve: str) -> str:
    return first_twelve + _cnp_check(first_twelve)


def test_known_identifiers_give_references_of_the_contract() -> None:
    for scheme, number in ((Scheme.CNP, CNP), (Scheme.CPF, CPF), (Scheme.IDNP, IDNP)):
        reference = derive(KEY, scheme, number)
        assert CHILD_PATTERN.fullmatch(reference)
        assert msgspec.convert(reference, ChildRef) == reference


@pytest.mark.parametrize(("scheme", "number", "says"), [
    (Scheme.CNP, "51005234000", "13 digits expected, got 11"),
    (Scheme.CNP, "5100523400012", "check digit does not match"),
    (Scheme.CNP, "5101323400011", "birth date or county code is impossible"),  # month 13
    (Scheme.CNP, "51005x3400011", "only digits"),
    (Scheme.CPF, "529.982.247-26", "check digit does not match"),
    (Scheme.CPF, "000.000.000-00", "not a number the scheme issues"),
    (Scheme.CPF, "5299822472", "11 digits expected, got 10"),
    (Scheme.IDNP, "2002000000009", "check digit does not match"),
    (Scheme.IDNP, "20020000000081", "13 digits expected, got 14"),
    (Scheme.IDNP, " ", "no digits given"),
    (Scheme.IDNP, "".join(chr(0xFF10 + int(d)) for d in IDNP), "only digits"),  # full-width digits: not ASCII
])
def test_a_bad_identifier_is_refused_saying_what_is_wrong_without_repeating_it(
    scheme: Scheme, number: str, says: str
) -> None:
    with pytest.raises(InvalidIdentifier) as refused:
        derive(KEY, scheme, number)
    assert says in str(refused.value)
    assert str(refused.value).startswith(f"invalid {scheme.name}:")
    digits = "".join(ch for ch in number if ch.isdigit())
    assert len(digits) < 8 or digits not in str(refused.value)


@given(valid_idnps)
def test_every_idnp_with_its_check_digit_is_valid(number: str) -> None:
    assert validate(Scheme.IDNP, number) == number


@given(valid_idnps, st.integers(0, 12), st.integers(1, 9))
def test_every_single_digit_change_of_an_idnp_is_caught(number: str, position: int, shift: int) -> None:
    # Weights 7, 3 and 1 are all prime to 10: any one digit changed moves the sum's last digit.
    changed = number[:position] + str((int(number[position]) + shift) % 10) + number[position + 1:]
    with pytest.raises(InvalidIdentifier, match="check digit"):
        validate(Scheme.IDNP, changed)


@given(valid_cnps)
def test_every_cnp_of_the_scheme_is_valid(number: str) -> None:
    assert validate(Scheme.CNP, number) == number


@given(valid_cnps, st.integers(0, 12), st.integers(1, 9))
def test_a_single_digit_change_of_a_cnp_is_caught_unless_the_scheme_cannot_see_it(
    number: str, position: int, shift: int
) -> None:
    changed = number[:position] + str((int(number[position]) + shift) % 10) + number[position + 1:]
    try:
        validate(Scheme.CNP, changed)
    except InvalidIdentifier:
        return
    # The one blind spot of CNP's check: remainders 10 and 1 are both written 1.
    before = sum(int(w) * int(d) for w, d in zip("279146358279", number[:12], strict=True)) % 11
    after = sum(int(w) * int(d) for w, d in zip("279146358279", changed[:12], strict=True)) % 11
    assert {before, after} == {1, 10} and position < 12


@given(valid_cpfs, st.integers(0, 10), st.integers(1, 9))
def test_a_single_digit_change_of_a_cpf_is_caught_as_the_scheme_defines(number: str, position: int, shift: int) -> None:
    changed = number[:position] + str((int(number[position]) + shift) % 10) + number[position + 1:]
    valid_by_the_scheme = changed[9:] == _cpf_checks(changed[:9])
    if position >= 9:
        assert not valid_by_the_scheme  # a mistyped check digit is always caught
    if valid_by_the_scheme:
        assert validate(Scheme.CPF, changed) == changed
    else:
        with pytest.raises(InvalidIdentifier, match="check digit"):
            validate(Scheme.CPF, changed)


def test_separators_do_not_change_the_reference() -> None:
    assert derive(KEY, Scheme.CPF, "529.982.247-25") == derive(KEY, Scheme.CPF, "52998224725")
    assert derive(KEY, Scheme.CNP, " 5100523400011 ") == derive(KEY, Scheme.CNP, CNP)


def test_the_scheme_is_part_of_the_reference() -> None:
    # 13 digits valid both as a CNP and as an IDNP: two different children, two references.
    body = next(
        b for b in (f"5{d:%y%m%d}40{s:03d}" for d in (date(2010, 1, 1) + timedelta(n) for n in range(400))
                    for s in range(1, 20))
        if _cnp_check(b) == idnp_check_digit(b)
    )
    both = body + idnp_check_digit(body)
    assert validate(Scheme.CNP, both) == validate(Scheme.IDNP, both) == both
    assert derive(KEY, Scheme.CNP, both) != derive(KEY, Scheme.IDNP, both)


def test_another_key_gives_another_reference() -> None:
    assert derive(KEY, Scheme.CNP, CNP) != derive(OTHER_KEY, Scheme.CNP, CNP)
    with pytest.raises(ValueError, match="128 bits"):
        derive(b"short", Scheme.CNP, CNP)


def test_the_reference_is_the_same_in_another_process_with_the_same_key() -> None:
    code = ("import sys; from refbus.services.rules.child_refs import Scheme, derive; "
            "print(derive(bytes.fromhex(sys.argv[1]), Scheme(sys.argv[2]), sys.argv[3]))")
    for key in (KEY, OTHER_KEY):
        out = subprocess.run([sys.executable, "-c", code, key.hex(), "md.idnp", IDNP], capture_output=True,
                             text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "random"})
        assert out.stdout.strip() == derive(key, Scheme.IDNP, IDNP)
    assert derive(KEY, Scheme.IDNP, IDNP) != derive(OTHER_KEY, Scheme.IDNP, IDNP)


def test_an_undocumented_childs_reference_is_random_and_of_the_contract() -> None:
    made = {undocumented() for _ in range(1000)}
    assert len(made) == 1000
    assert all(msgspec.convert(ref, ChildRef) == ref for ref in made)
