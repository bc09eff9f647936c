"""Password guessing is locked out, and the API's rate limits answer 429.

The lockout rule (``medplatform/auth.py``): 5 failures lock a username *from that address*; 50
(ten times as many) lock it from every address; 20 lock an address for every username.

Each test uses a username and a client address of its own, so that counts kept in a shared
cache (Redis in CI) never leak into another test or another run; nothing here clears the cache.
"""

from __future__ import annotations

import time
import uuid

import pytest
from django.contrib.auth import authenticate
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.test import Client, RequestFactory, override_settings
from rest_framework.test import APIClient

from medplatform import auth
from tests.factories import PASSWORD, UserFactory

LIMIT = 5


@pytest.fixture(autouse=True)
def lockout_policy(settings):
    settings.LOGIN_LOCKOUT_FAILURES = LIMIT
    settings.LOGIN_LOCKOUT_ADDRESS_FAILURES = 4 * LIMIT
    settings.LOGIN_LOCKOUT_WINDOW = 900
    settings.LOGIN_LOCKOUT_DURATION = 900


def fresh_address() -> str:
    """A client address no other test uses (documentation range 198.18.0.0/15)."""
    n = uuid.uuid4().int
    return f"198.{18 + n % 2}.{(n >> 8) % 256}.{(n >> 16) % 254 + 1}"


@pytest.fixture
def user(db):
    return UserFactory(username=f"guess-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def staff(db):
    return UserFactory(username=f"staff-{uuid.uuid4().hex[:10]}", superuser=True)


# --- the site's log-in page ---------------------------------------------------------------------


def site_login(client, username, password):
    return client.post("/login/", {"username": username, "password": password})


def locked_at(address, username) -> int:
    """Seconds left on the lock of ``username`` for a request from ``address``."""
    return auth.locked_for(RequestFactory(REMOTE_ADDR=address).post("/login/"), username)


def test_site_login_locks_after_n_failures_and_refuses_the_right_password(user):
    client = Client(REMOTE_ADDR=fresh_address())
    for _ in range(LIMIT - 1):
        response = site_login(client, user.username, "wrong")
        assert response.status_code == 200
        assert b"didn&#x27;t match" in response.content or b"didn't match" in response.content
    response = site_login(client, user.username, "wrong")
    assert response.status_code == 429
    assert b"Too many failed log-in attempts" in response.content

    response = site_login(client, user.username, PASSWORD)
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session
    assert locked_at(client.defaults["REMOTE_ADDR"], user.username) > 800


def test_failures_from_one_address_do_not_lock_the_account_from_another(user):
    """Nobody can keep someone else's account locked by failing to log in as them."""
    guesser = Client(REMOTE_ADDR=fresh_address())
    for _ in range(LIMIT):
        site_login(guesser, user.username, "wrong")
    assert site_login(guesser, user.username, PASSWORD).status_code == 429

    owner = Client(REMOTE_ADDR=fresh_address())
    response = site_login(owner, user.username, PASSWORD)
    assert response.status_code == 302
    assert owner.session["_auth_user_id"] == str(user.pk)
    assert token(APIClient(REMOTE_ADDR=fresh_address()), user.username, PASSWORD).status_code == 200
    # The guesser stays locked all the same.
    assert site_login(guesser, user.username, PASSWORD).status_code == 429


def test_guessing_one_username_from_many_addresses_locks_it_everywhere(user):
    """The backstop: ten times the per-address limit, from every address together."""
    for _ in range(9):
        guesser = Client(REMOTE_ADDR=fresh_address())
        for _ in range(LIMIT + 2):  # attempts beyond an address's lock add nothing
            site_login(guesser, user.username, "wrong")
    assert site_login(Client(REMOTE_ADDR=fresh_address()), user.username, PASSWORD).status_code == 302

    last = Client(REMOTE_ADDR=fresh_address())
    for _ in range(LIMIT):
        site_login(last, user.username, "wrong")
    elsewhere = Client(REMOTE_ADDR=fresh_address())
    response = site_login(elsewhere, user.username, PASSWORD)
    assert response.status_code == 429
    assert b"Too many failed log-in attempts" in response.content
    assert "_auth_user_id" not in elsewhere.session


def test_lock_ends_after_its_duration(user, settings):
    import time

    settings.LOGIN_LOCKOUT_DURATION = 1
    client = Client(REMOTE_ADDR=fresh_address())
    for _ in range(LIMIT):
        site_login(client, user.username, "wrong")
    assert site_login(client, user.username, PASSWORD).status_code == 429
    time.sleep(1.1)
    response = site_login(client, user.username, PASSWORD)
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)


def test_success_resets_the_username_counter(user):
    client = Client(REMOTE_ADDR=fresh_address())
    for _ in range(LIMIT - 1):
        site_login(client, user.username, "wrong")
    assert site_login(client, user.username, PASSWORD).status_code == 302
    client.logout()
    for _ in range(LIMIT - 1):
        assert site_login(client, user.username, "wrong").status_code == 200
    assert site_login(client, user.username, PASSWORD).status_code == 302


def test_usernames_are_counted_case_insensitively(user):
    client = Client(REMOTE_ADDR=fresh_address())
    for i in range(LIMIT):
        name = user.username.upper() if i % 2 else user.username
        site_login(client, name, "wrong")
    assert site_login(client, user.username, PASSWORD).status_code == 429


def test_one_address_guessing_many_usernames_is_locked(db):
    address = fresh_address()
    client = Client(REMOTE_ADDR=address)
    victims = [f"nobody-{uuid.uuid4().hex[:8]}" for _ in range(4 * LIMIT)]
    for name in victims:  # each username stays under its own limit
        site_login(client, name, "wrong")
    real = UserFactory(username=f"real-{uuid.uuid4().hex[:8]}")
    assert site_login(client, real.username, PASSWORD).status_code == 429
    # The same user from another address is not locked.
    assert site_login(Client(REMOTE_ADDR=fresh_address()), real.username, PASSWORD).status_code == 302


def test_unknown_usernames_count_too(db):
    client = Client(REMOTE_ADDR=fresh_address())
    name = f"ghost-{uuid.uuid4().hex[:8]}"
    for _ in range(LIMIT):
        site_login(client, name, "wrong")
    assert locked_at(client.defaults["REMOTE_ADDR"], name) > 0


# --- the admin's log-in page --------------------------------------------------------------------


def test_admin_login_is_locked_too(staff):
    client = Client(REMOTE_ADDR=fresh_address())
    for _ in range(LIMIT):
        response = client.post("/admin/login/", {"username": staff.username, "password": "wrong"})
    assert b"Too many failed log-in attempts" in response.content
    response = client.post("/admin/login/?next=/admin/",
                           {"username": staff.username, "password": PASSWORD})
    assert response.status_code == 200
    assert b"Too many failed log-in attempts" in response.content
    assert "_auth_user_id" not in client.session
    assert client.get("/admin/").status_code == 302


def test_admin_login_works_when_not_locked(staff):
    client = Client(REMOTE_ADDR=fresh_address())
    response = client.post("/admin/login/?next=/admin/",
                           {"username": staff.username, "password": PASSWORD})
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200


# --- the API's token endpoint -------------------------------------------------------------------


def token(client, username, password):
    return client.post("/api/v1/auth/token/", {"username": username, "password": password},
                       format="json")


def test_token_endpoint_answers_429_when_locked(user):
    client = APIClient(REMOTE_ADDR=fresh_address())
    for _ in range(LIMIT - 1):
        assert token(client, user.username, "wrong").status_code == 400
    response = token(client, user.username, "wrong")
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 800
    response = token(client, user.username, PASSWORD)
    assert response.status_code == 429
    assert "token" not in response.json()


def test_token_success_resets_the_counter(user):
    client = APIClient(REMOTE_ADDR=fresh_address())
    for _ in range(LIMIT - 1):
        token(client, user.username, "wrong")
    response = token(client, user.username, PASSWORD)
    assert response.status_code == 200 and response.json()["token"]
    for _ in range(LIMIT - 1):
        assert token(client, user.username, "wrong").status_code == 400
    assert token(client, user.username, PASSWORD).status_code == 200


def test_failures_on_one_entry_point_lock_the_others(user):
    address = fresh_address()
    api = APIClient(REMOTE_ADDR=address)
    for _ in range(LIMIT):
        token(api, user.username, "wrong")
    assert site_login(Client(REMOTE_ADDR=address), user.username, PASSWORD).status_code == 429
    # Any password check from that address, whoever makes it.
    request = RequestFactory(REMOTE_ADDR=address).post("/")
    assert authenticate(request, username=user.username, password=PASSWORD) is None


def test_token_endpoint_rejects_odd_bodies_without_error(db):
    client = APIClient(REMOTE_ADDR=fresh_address())
    assert client.post("/api/v1/auth/token/", [1, 2], format="json").status_code == 400
    assert client.post("/api/v1/auth/token/", {}, format="json").status_code == 400


# --- unlocking by hand ----------------------------------------------------------------------------


def test_unlock_login_lifts_a_usernames_locks_from_every_address(user, settings, capsys):
    settings.LOGIN_LOCKOUT_USERNAME_FAILURES = 2 * LIMIT
    typist = Client(REMOTE_ADDR=fresh_address())  # failures, not yet locked
    for _ in range(LIMIT - 1):
        site_login(typist, user.username, "wrong")
    guessers = [Client(REMOTE_ADDR=fresh_address()) for _ in range(2)]
    for guesser in guessers:
        for _ in range(LIMIT):
            site_login(guesser, user.username, "wrong")
    elsewhere = Client(REMOTE_ADDR=fresh_address())
    assert site_login(guessers[0], user.username, PASSWORD).status_code == 429
    assert site_login(elsewhere, user.username, PASSWORD).status_code == 429  # the backstop

    call_command("unlock_login", user.username.upper())

    assert "Log-in unlocked" in capsys.readouterr().out
    for client in [*guessers, elsewhere]:
        assert site_login(client, user.username, PASSWORD).status_code == 302
    # Failures counted before are forgotten too: as many again do not lock.
    for _ in range(LIMIT - 1):
        assert site_login(typist, user.username, "wrong").status_code == 200


def test_a_lock_made_after_an_unlock_lasts_its_whole_duration(user, settings):
    settings.LOGIN_LOCKOUT_WINDOW = settings.LOGIN_LOCKOUT_DURATION = 2  # seconds, for the test
    address = fresh_address()
    auth.unlock(user.username)
    time.sleep(1.5)  # guessing resumes late in the window after the unlock
    guesser = Client(REMOTE_ADDR=address)
    for _ in range(LIMIT):
        site_login(guesser, user.username, "wrong")
    assert locked_at(address, user.username) > 0
    time.sleep(0.7)  # past the window that followed the unlock; within the 2 s lock
    assert locked_at(address, user.username) > 0


def test_unlock_login_leaves_other_usernames_and_guessing_addresses_locked(user, db):
    other = UserFactory(username=f"other-{uuid.uuid4().hex[:8]}")
    address = fresh_address()
    client = Client(REMOTE_ADDR=address)
    for _ in range(LIMIT):
        site_login(client, other.username, "wrong")
    for i in range(4 * LIMIT - LIMIT):  # the address's limit, over many names
        site_login(client, f"nobody-{i}-{uuid.uuid4().hex[:6]}", "wrong")

    call_command("unlock_login", user.username)

    assert locked_at(address, other.username) > 0
    assert site_login(client, user.username, PASSWORD).status_code == 429  # the address's lock
    assert site_login(Client(REMOTE_ADDR=fresh_address()), user.username, PASSWORD).status_code == 302


def test_unlock_login_needs_a_username_and_says_when_no_account_has_it(db, capsys):
    with pytest.raises(CommandError):
        call_command("unlock_login", " ")
    call_command("unlock_login", f"ghost-{uuid.uuid4().hex[:8]}")
    assert "no account has this username" in capsys.readouterr().out


# --- with the cache unreachable -----------------------------------------------------------------


def test_with_the_cache_unreachable_the_site_login_still_checks_passwords(user, unreachable_cache,
                                                                         caplog):
    client = Client(REMOTE_ADDR=fresh_address())
    for _ in range(LIMIT + 1):  # nothing is counted: no lock either
        response = site_login(client, user.username, "wrong")
        assert response.status_code == 200
        assert b"match" in response.content
    response = site_login(client, user.username, PASSWORD)
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)
    assert "log-in lockout not checked" in caplog.text
    assert "log-in failure not counted" in caplog.text


def test_with_the_cache_unreachable_the_admin_login_still_works(staff, unreachable_cache):
    client = Client(REMOTE_ADDR=fresh_address())
    response = client.post("/admin/login/", {"username": staff.username, "password": "wrong"})
    assert response.status_code == 200
    response = client.post("/admin/login/?next=/admin/",
                           {"username": staff.username, "password": PASSWORD})
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200


def test_with_the_cache_unreachable_the_token_endpoint_still_works(user, unreachable_cache):
    client = APIClient(REMOTE_ADDR=fresh_address())
    assert token(client, user.username, "wrong").status_code == 400
    response = token(client, user.username, PASSWORD)
    assert response.status_code == 200 and response.json()["token"]
    assert client.get("/api/v1/presets/", HTTP_AUTHORIZATION=f"Token {response.json()['token']}"
                      ).status_code == 200


def test_with_the_cache_unreachable_unlock_login_says_it_did_not_unlock(unreachable_cache):
    with pytest.raises(CommandError, match="could not reach the cache"):
        call_command("unlock_login", "someone")


# --- API rate limits ----------------------------------------------------------------------------


@pytest.fixture
def low_rates(settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"anon": "3/min", "user": "4/min"},
    }


def test_anonymous_api_requests_beyond_the_rate_get_429(db, low_rates):
    """Anonymous requests are counted per address where they are allowed (the token endpoint);
    elsewhere they are refused with 401 before any work is done."""
    address = fresh_address()
    client = APIClient(REMOTE_ADDR=address)
    codes = [token(client, f"n-{uuid.uuid4().hex[:6]}", "x").status_code for _ in range(4)]
    assert codes == [400, 400, 400, 429]
    assert int(token(client, "n", "x")["Retry-After"]) > 0
    assert client.get("/api/v1/presets/").status_code == 401


def test_authenticated_api_requests_beyond_the_rate_get_429(user, low_rates):
    cache.delete(f"throttle_user_{user.pk}")
    client = APIClient(REMOTE_ADDR=fresh_address())
    client.force_authenticate(user)
    codes = [client.get("/api/v1/presets/").status_code for _ in range(5)]
    assert codes == [200, 200, 200, 200, 429]
    # Another user has a budget of their own.
    other = UserFactory(username=f"other-{uuid.uuid4().hex[:8]}")
    cache.delete(f"throttle_user_{other.pk}")
    client.force_authenticate(other)
    assert client.get("/api/v1/presets/").status_code == 200


def test_default_rates_are_configured():
    from medplatform import settings as production

    rates = production.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    assert rates["anon"] and rates["user"]
    assert production.REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"] == [
        "medplatform.throttling.AnonRateThrottle", "medplatform.throttling.UserRateThrottle",
    ]


# --- where the counts live -----------------------------------------------------------------------


@pytest.mark.parametrize("configured, location", [
    ("redis://cache.internal:6379/1", "redis://cache.internal:6379/1"),
    ("rediss://:secret@cache.internal:6380/0", "rediss://:secret@cache.internal:6380/0"),
    ("redis+socket:///srv/redis/redis.sock", "unix:///srv/redis/redis.sock?db=0"),
    ("redis+socket:///srv/redis/redis.sock?virtual_host=3", "unix:///srv/redis/redis.sock?db=3"),
])
def test_cache_follows_the_redis_url(monkeypatch, configured, location):
    from medplatform import settings as production

    monkeypatch.setenv("REDIS_URL", configured)
    assert production._redis_cache_location() == location


def test_cache_works_through_the_brokers_socket_or_url(redis_broker):
    """The broker the suite runs on (the embedded server's socket, or REDIS_URL) serves the cache."""
    from django.core.cache.backends.redis import RedisCache

    from medplatform import settings as production

    location = production._redis_cache_location()
    assert location, "a running Redis server must be used for the cache"
    if redis_broker.startswith("redis+socket://"):
        assert location.startswith("unix://")
    shared = RedisCache(location, {"KEY_PREFIX": f"probe-{uuid.uuid4().hex[:8]}"})
    shared.set("failures", 1, timeout=30)
    assert shared.incr("failures") == 2
    shared.delete("failures")


def test_a_rate_limit_counts_in_windows_and_says_when_the_next_one_starts(user, low_rates, monkeypatch):
    from medplatform import throttling

    cache.delete(f"throttle_user_{user.pk}")
    client = APIClient(REMOTE_ADDR=fresh_address())
    client.force_authenticate(user)
    assert [client.get("/api/v1/presets/").status_code for _ in range(4)] == [200] * 4
    refused = client.get("/api/v1/presets/")
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= 60
    # The count is one integer per client: forgetting it (as its expiry does when the window
    # ends) starts a new window with the full budget.
    assert cache.get(f"throttle_user_{user.pk}") == 5
    cache.delete(f"throttle_user_{user.pk}")
    assert client.get("/api/v1/presets/").status_code == 200
    assert issubclass(throttling.UserRateThrottle, throttling._FixedWindowThrottle)


def test_with_redis_a_request_is_counted_in_one_round_trip_and_its_window_always_ends(
        redis_cache, monkeypatch):
    from medplatform import throttling

    client = redis_cache
    key = f"throttle_probe_{uuid.uuid4().hex}"
    raw_key = cache.make_and_validate_key(key)
    sent = []
    real = type(client).execute_command
    monkeypatch.setattr(type(client), "execute_command",
                        lambda self, *args, **kw: sent.append(args[0]) or real(self, *args, **kw))
    assert throttling.count_in_window(key, 60) == (1, 60.0)
    assert sent in (["EVALSHA"], ["EVALSHA", "SCRIPT LOAD", "EVALSHA"])  # loaded once per server
    sent.clear()
    count, left = throttling.count_in_window(key, 60)
    assert count == 2 and 55 < left <= 60 and sent == ["EVALSHA"]
    assert 0 < client.pttl(raw_key) <= 60_000
    # A counter left without an expiry (written by other code) gets one: it cannot lock out forever.
    client.persist(raw_key)
    assert client.pttl(raw_key) == -1
    assert throttling.count_in_window(key, 30)[0] == 3
    assert 0 < client.pttl(raw_key) <= 30_000
    assert cache.get(key) == 3  # the same integer Django's cache reads
    cache.delete(key)


@pytest.mark.usefixtures("redis_cache")
def test_with_redis_api_requests_beyond_the_rate_get_429_until_the_window_ends(user, settings):
    """A window of one second, in real time."""
    import time

    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK,
                               "DEFAULT_THROTTLE_RATES": {"anon": "3/min", "user": "2/s"}}
    client = APIClient(REMOTE_ADDR=fresh_address())
    client.force_authenticate(user)
    codes = [client.get("/api/v1/presets/") for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert codes[-1]["Retry-After"] == "1"
    time.sleep(1.2)
    assert [client.get("/api/v1/presets/").status_code for _ in range(3)] == [200, 200, 429]


def test_without_redis_the_cache_counts_the_same_way(settings):
    from medplatform import throttling

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": f"rates-{uuid.uuid4().hex}"}}
    assert not hasattr(cache, "count_in_window")
    assert throttling.count_in_window("k", 60) == (1, 60)
    count, left = throttling.count_in_window("k", 60)
    assert count == 2 and 55 < left <= 60


def test_an_unreachable_cache_lets_requests_through_and_says_so(user, low_rates, caplog):
    unreachable = {"default": {"BACKEND": "medplatform.cache.RedisCache",
                               "LOCATION": "redis://127.0.0.1:1/0"}}
    client = APIClient(REMOTE_ADDR=fresh_address())
    client.force_authenticate(user)
    with override_settings(CACHES=unreachable):
        codes = [client.get("/api/v1/presets/").status_code for _ in range(6)]
    assert codes == [200] * 6
    assert "rate limit user not counted" in caplog.text
