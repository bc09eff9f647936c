"""A user can revoke and rotate their API token, and a changed password revokes it: in each case
the very next request with the old key is refused (401), with the token's user cached or not.

Every token is used once before it is revoked, so that its user sits in the shared cache
(``medplatform.authentication``): a revocation that left the cached entry would go unnoticed.
"""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.hashers import make_password
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import PASSWORD, UserFactory

TOKEN_URL = "/api/v1/auth/token/"
ROTATE_URL = "/api/v1/auth/token/rotate/"
PROBE_URL = "/api/v1/presets/"


@pytest.fixture(params=["memory", "redis"])
def any_cache(request):
    """The tests' default cache (per process), then the suite's Redis server."""
    if request.param == "redis":
        request.getfixturevalue("redis_cache")


@pytest.fixture
def user(db):
    return UserFactory(username=f"tok-{uuid.uuid4().hex[:10]}")


def fresh_address() -> str:
    n = uuid.uuid4().int
    return f"198.{18 + n % 2}.{(n >> 8) % 256}.{(n >> 16) % 254 + 1}"


def with_token(key: str) -> APIClient:
    client = APIClient(REMOTE_ADDR=fresh_address())
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def obtain(user) -> str:
    response = APIClient(REMOTE_ADDR=fresh_address()).post(
        TOKEN_URL, {"username": user.username, "password": PASSWORD}, format="json")
    assert response.status_code == 200
    key = response.json()["token"]
    assert with_token(key).get(PROBE_URL).status_code == 200  # now cached
    return key


@pytest.mark.usefixtures("any_cache")
def test_deleting_the_token_refuses_it_on_the_next_request(user):
    key = obtain(user)
    client = with_token(key)

    response = client.delete(TOKEN_URL)

    assert response.status_code == 204
    assert client.get(PROBE_URL).status_code == 401
    assert not Token.objects.filter(user=user).exists()
    assert client.delete(TOKEN_URL).status_code == 401
    # A password log-in gives a new token.
    assert obtain(user) != key


def test_a_logged_in_user_can_revoke_their_token_from_the_browser(user):
    key = obtain(user)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    browser.get("/")  # sets the CSRF cookie
    csrf = browser.cookies["csrftoken"].value

    assert browser.delete(TOKEN_URL).status_code == 403  # no CSRF token: refused
    assert browser.delete(TOKEN_URL, HTTP_X_CSRFTOKEN=csrf).status_code == 204

    assert with_token(key).get(PROBE_URL).status_code == 401


def test_revoking_needs_credentials_and_touches_no_one_elses_token(user):
    other = UserFactory(username=f"tok-other-{uuid.uuid4().hex[:8]}")
    key, other_key = obtain(user), obtain(other)

    assert APIClient().delete(TOKEN_URL).status_code == 401
    assert with_token("not-a-token").delete(TOKEN_URL).status_code == 401
    assert with_token(key).delete(TOKEN_URL).status_code == 204

    assert with_token(other_key).get(PROBE_URL).status_code == 200


@pytest.mark.usefixtures("any_cache")
def test_rotating_gives_a_new_token_and_refuses_the_old_one_at_once(user):
    old = obtain(user)

    response = with_token(old).post(ROTATE_URL)

    assert response.status_code == 200
    new = response.json()["token"]
    assert new and new != old
    assert with_token(old).get(PROBE_URL).status_code == 401
    assert with_token(new).get(PROBE_URL).status_code == 200
    assert list(Token.objects.filter(user=user).values_list("key", flat=True)) == [new]
    # The password log-in now gives the new token.
    assert obtain(user) == new


def test_rotating_without_a_token_creates_one_and_needs_credentials(user):
    assert APIClient().post(ROTATE_URL).status_code == 401
    assert with_token("not-a-token").post(ROTATE_URL).status_code == 401
    client = APIClient()
    client.force_authenticate(user)
    response = client.post(ROTATE_URL)
    assert response.status_code == 200
    assert Token.objects.get(user=user).key == response.json()["token"]


@pytest.mark.usefixtures("any_cache")
def test_changing_the_password_revokes_the_token(user):
    key = obtain(user)

    user.set_password("a-new-password-123")
    user.save()

    assert with_token(key).get(PROBE_URL).status_code == 401
    assert not Token.objects.filter(user=user).exists()


def test_a_password_changed_in_the_admin_revokes_the_token(user):
    key = obtain(user)
    staff = UserFactory(username=f"tok-staff-{uuid.uuid4().hex[:8]}", superuser=True)
    admin = Client()
    admin.force_login(staff)

    response = admin.post(f"/admin/auth/user/{user.pk}/password/",
                          {"password1": "Another-pass-456", "password2": "Another-pass-456"})

    assert response.status_code == 302
    assert with_token(key).get(PROBE_URL).status_code == 401


def test_only_a_password_change_revokes_the_token_not_other_saves_or_a_rehash(user):
    # A stored hash that Django upgrades at the next log-in (too short a salt): the upgrade
    # saves the user with a new hash, yet the password is the same.
    user.password = make_password(PASSWORD, salt="short", hasher="md5")
    user.save()
    key = obtain(user)
    assert obtain(user) == key  # logged in again: the hash was upgraded
    user.refresh_from_db()
    assert "$short$" not in user.password
    user.first_name = "Renamed"
    user.save()
    assert with_token(key).get(PROBE_URL).status_code == 200

    user.set_password("a-new-password-123")
    user.save()

    assert with_token(key).get(PROBE_URL).status_code == 401


def test_the_schema_describes_revoking_and_rotating(user):
    client = APIClient()
    client.force_authenticate(user)
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"post", "delete"} <= set(paths[TOKEN_URL])
    assert "204" in paths[TOKEN_URL]["delete"]["responses"]
    assert "token" in str(paths[ROTATE_URL]["post"]["responses"]["200"])
