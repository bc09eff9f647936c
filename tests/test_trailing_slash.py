"""A URL without its trailing slash is redirected with 308, which keeps the method and body."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def test_a_post_without_the_trailing_slash_is_sent_on_with_its_body():
    UserFactory(username="tess")
    client = Client()
    body = {"username": "tess", "password": PASSWORD}

    response = client.post("/api/v1/auth/token", body, content_type="application/json")
    assert response.status_code == 308
    assert response["Location"] == "/api/v1/auth/token/"

    response = client.post("/api/v1/auth/token", body, content_type="application/json",
                           follow=True)
    assert response.redirect_chain == [("/api/v1/auth/token/", 308)]
    assert response.status_code == 200 and response.json()["token"]


def test_a_page_without_the_trailing_slash_is_redirected_to_it():
    response = Client().get("/datasets")
    assert response.status_code == 308 and response["Location"] == "/datasets/"
