"""The rows every classification reads (token, user, model, dataset) come from the shared cache,
and every change to them is seen by the next request."""

from __future__ import annotations

import io
import pickle
import uuid

import pytest
from django.core.cache import cache
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from classifier import selectors, services
from classifier.api.predictions import PredictionSerializer, prediction_payload
from classifier.models import ModelVersion, Prediction, Visibility
from medplatform import authentication
from medplatform.cache import RedisCache
from tests.factories import (
    PASSWORD,
    TINY_CLASS_COUNTS,
    DatasetFactory,
    UserFactory,
    medmnist_arrays,
    save_tiny_trained_model,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("isolated_model_cache")]

URL = "/api/v1/predictions/"
ME = "/api/v1/predictions/"  # any authenticated read


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    arrays = medmnist_arrays(TINY_CLASS_COUNTS)
    return save_tiny_trained_model(arrays, tmp_path_factory.mktemp("models") / "tiny.keras")


@pytest.fixture
def owner():
    return UserFactory(username="olga")


@pytest.fixture
def model(owner, model_file):
    return services.model_version_register(
        name="tiny-cnn", architecture="compact_cnn", dataset=DatasetFactory(owner=owner),
        owner=owner, artifact_path=model_file, config={"width": 8},
    )


def token_client(user) -> APIClient:
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def png() -> io.BytesIO:
    buffer = io.BytesIO()
    Image.new("RGB", (28, 28), (180, 90, 140)).save(buffer, format="PNG")
    buffer.seek(0)
    buffer.name = "cell.png"
    return buffer


def classify(client, model_id):
    return client.post(URL, {"images": [png()], "model": model_id, "gradcam": "false"},
                       format="multipart")


def cached_token_user(user):
    key = authentication.tokens.key(authentication._token_digest(user.auth_token.key))
    return cache.get(key)


# --- tokens ------------------------------------------------------------------------------------


def token_queries(client) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(ME).status_code == 200
    return [q["sql"] for q in queries if "authtoken_token" in q["sql"]]


def test_a_token_is_read_from_the_cache_after_its_first_use(owner):
    client = token_client(owner)
    assert len(token_queries(client)) == 1
    assert cached_token_user(owner).pk == owner.pk
    assert token_queries(client) == []


def test_the_cache_is_keyed_by_a_hash_of_the_token_never_the_token(owner):
    client = token_client(owner)
    client.get(ME)
    key = authentication.tokens.key(authentication._token_digest(owner.auth_token.key))
    assert owner.auth_token.key not in key
    assert cache.get(key) is not None


def test_the_cache_holds_neither_the_token_nor_the_password_hash(owner):
    client = token_client(owner)
    assert client.get(ME).status_code == 200
    cached = pickle.dumps(cached_token_user(owner))
    assert owner.auth_token.key.encode() not in cached
    owner.refresh_from_db()
    assert owner.password and owner.password.encode() not in cached
    # The cached user still saves safely: only its loaded fields are written.
    user = cached_token_user(owner)
    user.first_name = "Olga"
    user.save()
    owner.refresh_from_db()
    assert owner.first_name == "Olga" and owner.check_password(PASSWORD)


def test_a_deleted_token_is_refused_at_once(owner):
    client = token_client(owner)
    assert client.get(ME).status_code == 200
    Token.objects.filter(user=owner).delete()
    response = client.get(ME)
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid token."


def test_a_deactivated_user_is_refused_at_once(owner):
    client = token_client(owner)
    assert client.get(ME).status_code == 200
    owner.is_active = False
    owner.save()
    response = client.get(ME)
    assert response.status_code == 401
    assert response.json()["detail"] == "User inactive or deleted."


def test_a_deleted_user_is_refused_at_once(owner):
    client = token_client(owner)
    assert client.get(ME).status_code == 200
    owner.delete()
    assert client.get(ME).status_code == 401


def test_a_user_made_staff_is_seen_as_staff_by_the_next_request(owner, model):
    stranger = UserFactory(username="sven")
    client = token_client(stranger)
    assert classify(client, model.pk).status_code == 400  # a private model of another user
    stranger.is_staff = True
    stranger.save()
    assert classify(client, model.pk).status_code == 201


def test_an_unknown_token_is_refused_and_not_cached(owner):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert client.get(ME).status_code == 401
    assert cache.get(authentication.tokens.key(authentication._token_digest("0" * 40))) is None


# --- the model and its dataset -----------------------------------------------------------------


def test_a_model_is_read_from_the_cache_after_its_first_use(owner, model, django_assert_num_queries):
    client = token_client(owner)
    assert classify(client, model.pk).status_code == 201
    # Classifying again: the prediction's transaction and row (no token, user, model, dataset).
    with django_assert_num_queries(3):
        assert classify(client, model.pk).status_code == 201


def test_a_model_made_private_is_refused_to_others_at_once(owner, model):
    model.visibility = Visibility.PUBLIC
    model.save()
    stranger = token_client(UserFactory(username="sven"))
    assert classify(stranger, model.pk).status_code == 201
    model.visibility = Visibility.PRIVATE
    model.save()
    response = classify(stranger, model.pk)
    assert response.status_code == 400
    assert "not visible to you" in response.json()["model"][0]


def test_a_deleted_model_is_refused_at_once(owner, model):
    client = token_client(owner)
    model_id = model.pk
    assert classify(client, model_id).status_code == 201
    model.delete()
    response = classify(client, model_id)
    assert response.status_code == 400
    assert Prediction.objects.count() == 0


def test_a_renamed_dataset_is_in_the_next_answer(owner, model):
    client = token_client(owner)
    assert classify(client, model.pk).json()[0]["model"]["dataset_name"] != "Renamed"
    dataset = model.dataset
    dataset.name = "Renamed"
    dataset.save()
    assert classify(client, model.pk).json()[0]["model"]["dataset_name"] == "Renamed"


def test_cached_rows_are_dropped_again_when_the_change_commits(
        owner, model, monkeypatch, django_capture_on_commit_callbacks):
    # A request between the change and its commit could cache the old row: the entry is dropped
    # when the row is saved, and replaced by a tombstone when the transaction commits.
    key = selectors.serving_models.key(model.pk)
    cache.set(key, "a cached row", timeout=60)
    with django_capture_on_commit_callbacks() as on_commit, transaction.atomic():
        model.save()
        assert cache.get(key) is None
    cache.set(key, "put back by a request that read the row before the commit", timeout=60)
    for callback in on_commit:
        callback()
    assert cache.get(key) == "row-cache:forgotten"


def test_a_row_read_before_a_change_is_not_stored_after_it(owner, model,
                                                            django_capture_on_commit_callbacks):
    """The race the tombstones close: a request reads the old row from the database, the change
    commits and drops the entry, then that request stores what it read."""
    rows = selectors.RowCache("race-probe", [ModelVersion], lambda pk: None)
    old_row = ModelVersion.objects.get(pk=model.pk)

    def read_then_lose_the_race(pk):
        with django_capture_on_commit_callbacks() as on_commit:
            rows.forget(pk)
        for callback in on_commit:  # the writer commits between this read and the store
            callback()
        return old_row

    rows._load = read_then_lose_the_race
    assert rows.get(model.pk) is old_row  # this request still answers with what it read
    assert cache.get(rows.key(model.pk)) == "row-cache:forgotten"  # but did not put it back
    rows._load = lambda pk: ModelVersion.objects.get(pk=pk)
    assert rows.get(model.pk).pk == model.pk  # read from the database while the tombstone lasts
    assert cache.get(rows.key(model.pk)) == "row-cache:forgotten"
    cache.delete(rows.key(model.pk))  # as its expiry does
    assert rows.get(model.pk).pk == model.pk and cache.get(rows.key(model.pk)).pk == model.pk


def test_without_a_reachable_cache_rows_come_from_the_database(owner, model):
    unreachable = {"default": {"BACKEND": "medplatform.cache.RedisCache",
                               "LOCATION": "redis://127.0.0.1:1/0"}}
    with override_settings(CACHES=unreachable):
        assert selectors.model_version_for_serving(pk=model.pk, user=owner).pk == model.pk
        assert classify(token_client(owner), model.pk).status_code == 201


def test_with_row_caching_off_every_request_reads_the_database(owner, settings):
    settings.ROW_CACHE_SECONDS = 0
    client = token_client(owner)
    assert len(token_queries(client)) == 1
    assert len(token_queries(client)) == 1
    assert cached_token_user(owner) is None


def test_keys_name_the_models_fields_so_rows_of_older_code_are_not_read():
    key = selectors.serving_models.key(7)
    assert key.startswith("row:serving-model:") and key.endswith(":7")
    fewer_fields = selectors.RowCache("serving-model", [ModelVersion], lambda pk: None)
    assert fewer_fields.key(7) != key


# --- the answer --------------------------------------------------------------------------------


def test_the_answer_is_what_the_documented_serializer_gives(owner, model):
    client = token_client(owner)
    answer = client.post(URL, {"images": [png()], "model": model.pk, "tta": "true"},
                         format="multipart").json()[0]
    prediction = Prediction.objects.get(pk=answer["id"])
    prediction.gradcam_png = b"\x89PNG-bytes"
    expected = dict(PredictionSerializer(prediction).data)
    assert prediction_payload(prediction) == expected
    assert list(prediction_payload(prediction)) == list(expected)  # same order of keys
    assert answer["gradcam"].startswith("data:image/png;base64,")
    assert answer["uncertainty"] is not None


# --- the cache backend -------------------------------------------------------------------------


def test_the_redis_backend_keeps_one_client_per_server(redis_broker):
    from medplatform.settings import _redis_cache_location

    location = _redis_cache_location() or redis_broker
    backend = RedisCache(location, {"KEY_PREFIX": f"test-client-reuse-{uuid.uuid4().hex[:8]}"})
    client = backend._cache.get_client(write=True)
    assert backend._cache.get_client() is client
    backend.set("k", {"v": 1}, timeout=30)
    assert backend.get("k") == {"v": 1}
    assert backend.add("n", 1)
    assert backend.incr("n", 1) == 2
    assert backend.get("n") == 2
    backend.delete_many(["k", "n"])



def test_a_cache_that_hangs_costs_a_request_timeouts_not_a_hang(owner, model, settings, caplog):
    """A Redis that accepts connections but never answers: every cache operation gives up after
    the configured timeout, and the request is answered from the database."""
    import socket
    import time

    from medplatform import settings as production

    client = token_client(owner)
    assert classify(client, model.pk).status_code == 201  # the model loaded, as in a live process
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepted by the kernel, never read or answered
    try:
        assert production.REDIS_CACHE_OPTIONS["socket_timeout"] <= 1
        settings.CACHES = {"default": {
            "BACKEND": "medplatform.cache.RedisCache", "OPTIONS": production.REDIS_CACHE_OPTIONS,
            "LOCATION": f"redis://127.0.0.1:{silent.getsockname()[1]}/0"}}
        began = time.monotonic()
        assert classify(client, model.pk).status_code == 201
        assert time.monotonic() - began < 5
        assert "row cache api-token-user unavailable" in caplog.text
    finally:
        silent.close()
