"""The signing key ring on disk (a temporary folder): first run, rotation with publish-before-sign,
the previous key verifying until its tokens have expired, unpublished keys, pruning."""

from __future__ import annotations

import json
import stat
import time

import jwt
import pytest

from posmesh.common.errors import Unavailable
from posmesh.common.settings import Settings
from posmesh.common.tokens import KeySet
from services.auth import keys
from services.auth.access_tokens import AccessTokenIssuer

T0 = 1_800_000_000.0
TTL, LEEWAY, LEAD = 900, 10, 300


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(POSMESH_DATA_DIR=str(tmp_path), ACCESS_TOKEN_TTL_SECONDS=TTL,
                    JWT_LEEWAY_SECONDS=LEEWAY, JWT_KEY_PUBLISH_LEAD_SECONDS=LEAD)


def ring(settings: Settings) -> keys.KeyRing:
    keyring = keys.KeyRing(settings)
    keyring.load()
    return keyring


def published_kids(keyring: keys.KeyRing, now: float) -> list[str]:
    return [entry["kid"] for entry in keyring.jwks(now)["keys"]]


def test_the_first_run_makes_one_es256_key_that_signs_at_once(settings):
    [first] = keys.ensure_keys(settings, now=T0)
    assert first.alg == "ES256" and first.publish_at == first.sign_from == T0
    pem = settings.keys_dir / f"{first.kid}.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert keys.ensure_keys(settings, now=T0 + 5) == [first], "later runs keep the key"
    keyring = ring(settings)
    assert keyring.signing_key(T0).kid == first.kid
    assert published_kids(keyring, T0) == [first.kid]


def test_the_jwks_holds_public_keys_only(settings):
    keys.ensure_keys(settings, now=T0)
    [entry] = ring(settings).jwks(T0)["keys"]
    assert set(entry) == {"kty", "crv", "use", "alg", "kid", "x", "y"}


def test_a_rotated_key_is_published_before_it_signs(settings):
    [old] = keys.ensure_keys(settings, now=T0)
    new = keys.rotate(settings, now=T0 + 100)
    assert new.publish_at == T0 + 100 and new.sign_from == T0 + 100 + LEAD
    keyring = ring(settings)
    # Published at once, next to the key that still signs.
    assert published_kids(keyring, T0 + 101) == [old.kid, new.kid]
    assert keyring.signing_key(T0 + 101).kid == old.kid
    assert keyring.signing_key(new.sign_from - 0.001).kid == old.kid
    # Signs from its time on (to the sub-second).
    assert keyring.signing_key(new.sign_from).kid == new.kid


def test_the_previous_key_verifies_until_its_last_tokens_expire_then_leaves_the_jwks(settings):
    [old] = keys.ensure_keys(settings, now=T0)
    new = keys.rotate(settings, now=T0)
    keyring = ring(settings)
    last_signed_by_old = new.sign_from - 1
    token = AccessTokenIssuer(settings, keyring).issue(
        user_id="u", session_id="s", restaurant_id="", role="", now=last_signed_by_old)
    assert jwt.get_unverified_header(token.token)["kid"] == old.kid

    still_valid_at = token.expires_at + LEEWAY - 1
    keyset = KeySet()
    keyset.load_jwks(keyring.jwks(still_valid_at))
    assert old.kid in keyset.kids()
    # Its signature checks out against the key published at that moment (times are the fake
    # clock's, so expiry is not what is checked here).
    claims = jwt.decode(token.token, key=keyset.get(old.kid).key, algorithms=["ES256"],
                        audience=settings.jwt_audience, issuer=settings.jwt_issuer,
                        options={"verify_exp": False, "verify_iat": False})
    assert claims["sid"] == "s"

    retired_at = new.sign_from + TTL + LEEWAY
    assert published_kids(keyring, retired_at - 1) == [old.kid, new.kid]
    assert published_kids(keyring, retired_at) == [new.kid]


def test_a_key_scheduled_for_later_is_neither_published_nor_signing(settings):
    [current] = keys.ensure_keys(settings, now=T0)
    later = keys.add_key(settings, publish_at=T0 + 3600, sign_from=T0 + 7200, now=T0)
    keyring = ring(settings)
    assert published_kids(keyring, T0 + 10) == [current.kid]
    assert keyring.signing_key(T0 + 10).kid == current.kid
    assert later.kid in published_kids(keyring, T0 + 3600)
    assert keyring.signing_key(T0 + 7200).kid == later.kid


def test_a_key_cannot_sign_before_it_is_published(settings):
    with pytest.raises(ValueError):
        keys.add_key(settings, publish_at=T0 + 10, sign_from=T0, now=T0)


def test_only_an_unpublished_key_can_be_withdrawn(settings):
    [current] = keys.ensure_keys(settings, now=T0)
    later = keys.add_key(settings, publish_at=T0 + 3600, sign_from=T0 + 7200, now=T0)
    keys.discard_unpublished(settings, later.kid, now=T0 + 10)
    assert not (settings.keys_dir / f"{later.kid}.pem").exists()
    assert [info.kid for info in ring(settings).infos()] == [current.kid]
    with pytest.raises(ValueError):
        keys.discard_unpublished(settings, current.kid, now=T0 + 10)


def test_keys_retired_long_ago_are_deleted_on_the_next_rotation(settings):
    [first] = keys.ensure_keys(settings, now=T0)
    second = keys.rotate(settings, now=T0)
    much_later = second.sign_from + TTL + LEEWAY + keys.PRUNE_AFTER_SECONDS + 1
    third = keys.rotate(settings, now=much_later)
    remaining = [info.kid for info in ring(settings).infos()]
    assert remaining == [second.kid, third.kid]
    assert not (settings.keys_dir / f"{first.kid}.pem").exists()


def test_without_an_active_key_signing_fails_clearly(settings):
    keys.add_key(settings, publish_at=T0 + 100, sign_from=T0 + 100, now=T0)
    with pytest.raises(Unavailable) as caught:
        ring(settings).signing_key(T0)
    assert caught.value.reason == "SIGNING_KEY_UNAVAILABLE"


def test_the_running_service_notices_a_rotation_made_by_another_process(settings):
    keys.ensure_keys(settings, now=T0)
    keyring = ring(settings)
    assert keyring.reload_if_changed(min_interval=0) is False
    time.sleep(0.01)  # a new mtime
    new = keys.rotate(settings, publish_lead_seconds=0)
    assert keyring.reload_if_changed(min_interval=0) is True
    assert new.kid in [info.kid for info in keyring.infos()]


def test_a_damaged_key_ring_file_keeps_the_loaded_keys(settings):
    [first] = keys.ensure_keys(settings, now=T0)
    keyring = ring(settings)
    time.sleep(0.01)
    (settings.keys_dir / keys.KEYRING_FILE).write_text("{ not json")
    assert keyring.reload_if_changed(min_interval=0) is False
    assert keyring.signing_key(T0).kid == first.kid


def test_the_kid_is_derived_from_the_key(settings):
    [first] = keys.ensure_keys(settings, now=T0)
    key = keys.load_private_key(settings.keys_dir, first.kid)
    assert first.kid.endswith(keys.thumbprint(key.public_key())[:16])
    assert json.loads((settings.keys_dir / keys.KEYRING_FILE).read_text())[0]["kid"] == first.kid
