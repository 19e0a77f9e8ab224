"""The rules of a new PIN, pairing and setup codes, and the keyed hash of PINs (services/auth/
pins.py, device_rules.py)."""

from __future__ import annotations

import pytest

from posmesh.common.errors import InvalidArgument
from services.auth import device_rules
from services.auth.pins import KeyedHashing, check_new_pin, is_trivial, load_pepper


@pytest.mark.parametrize("pin", ["0000", "99999999", "1234", "23456", "9876", "7890", "0987",
                                 "3210", "12345678"])
def test_repeated_digits_and_runs_up_or_down_are_trivial(pin):
    assert is_trivial(pin)
    with pytest.raises(InvalidArgument) as refused:
        check_new_pin(pin)
    assert refused.value.reason == "WEAK_PIN"


@pytest.mark.parametrize("pin", ["2580", "1470", "4826", "13579", "90817263"])
def test_other_pins_of_4_to_8_digits_are_accepted(pin):
    assert check_new_pin(pin) == pin


@pytest.mark.parametrize("pin", ["", "123", "123456789", "12a4", "１２３９", "٣٩١٧", " 2580"])
def test_a_pin_is_4_to_8_ascii_digits(pin):
    with pytest.raises(InvalidArgument) as refused:
        check_new_pin(pin)
    assert refused.value.reason == "WEAK_PIN"


def test_a_pin_hash_is_salted_and_verifies_only_its_pin_under_its_key():
    hashing = KeyedHashing(b"k" * 32)
    first, second = hashing.hash_pin("2580"), hashing.hash_pin("2580")

    assert first != second and "2580" not in first
    assert hashing.verify_pin(first, "2580") and hashing.verify_pin(second, "2580")
    assert not hashing.verify_pin(first, "2581")
    assert not KeyedHashing(b"x" * 32).verify_pin(first, "2580")  # the database alone is not enough
    for broken in (None, "", "pmpin1$$", "argon2$x$y", "pmpin1$!!$??"):
        assert not hashing.verify_pin(broken, "2580")


def test_code_digests_depend_on_purpose_and_key():
    hashing = KeyedHashing(b"k" * 32)
    assert hashing.code_digest("pair", "ABCD2345") != hashing.code_digest("setup", "ABCD2345")
    assert len(hashing.code_digest("pair", "ABCD2345")) == 32


def test_the_pepper_is_made_once_private_and_then_reused(tmp_path):
    first = load_pepper(tmp_path)
    assert len(first) == 32 and load_pepper(tmp_path) == first
    assert (tmp_path / "pin-pepper.key").stat().st_mode & 0o077 == 0


def test_pairing_codes_are_read_forgivingly_and_refused_clearly():
    code = device_rules.new_pairing_code()
    assert len(code.code) == 9 and code.code[4] == "-"
    assert device_rules.normalise_pairing_code(code.code.lower().replace("-", " ")) == code.normalised
    assert device_rules.normalise_pairing_code("abcd-efgh") == "ABCDEFGH"
    assert device_rules.normalise_pairing_code("oiLo-2345") == "0110" + "2345"
    for bad in ("", "ABCD-EFG", "ABCD-EFGHJ", "ABCU-EFGH", "ABC!-EFGH"):
        with pytest.raises(InvalidArgument) as refused:
            device_rules.normalise_pairing_code(bad)
        assert refused.value.reason == "PAIRING_CODE_INVALID"


def test_the_idle_lock_is_bounded_with_a_shorter_minimum_in_development():
    assert device_rules.valid_idle_lock(30, development=False) == 30
    assert device_rules.valid_idle_lock(2, development=True) == 2
    for seconds, development in ((29, False), (1, True), (3601, False)):
        with pytest.raises(InvalidArgument):
            device_rules.valid_idle_lock(seconds, development=development)
