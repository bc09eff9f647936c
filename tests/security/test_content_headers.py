"""Stored and generated files are served so that they cannot run as script in the site's origin.

Every route that returns a file (an uploaded image, a dataset image, batch results, a model
card, a comparison CSV) sends a fixed, safe content type, ``Content-Disposition: attachment``
and ``X-Content-Type-Options: nosniff``. Every HTML page carries a Content Security Policy whose
scripts come from the site only (no ``'unsafe-inline'``), and holds no inline script that such a
policy would block.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import UserFactory
from tests.security.test_authz_matrix import MATRIX, STAFF, A, build_world

pytestmark = pytest.mark.django_db

SAFE_TYPES = {
    "image/png", "image/jpeg", "image/bmp", "image/tiff", "text/csv", "application/json",
    "text/markdown", "application/zip", "application/octet-stream",
}

FILE_ROUTES = [
    ("/api/v1/predictions/{a_prediction}/image/", "image/png"),
    ("/api/v1/inference-jobs/{a_batch}/results/csv/", "text/csv"),
    ("/api/v1/inference-jobs/{a_batch}/results/json/", "application/json"),
    ("/api/v1/datasets/{a_dataset}/images/train/0/", "image/png"),
    ("/api/v1/models/{a_model}/card/", "text/markdown"),
    ("/api/v1/models/compare/?dataset={a_dataset}&models={a_model}&format=csv", "text/csv"),
    ("/models/compare/?models={a_model}&format=csv", "text/csv"),
]


@pytest.fixture
def world():
    return build_world()


def owner_client(world) -> Client:
    client = Client()
    client.force_login(world.users[A])
    return client


@pytest.mark.parametrize("path, content_type", FILE_ROUTES)
def test_files_are_downloads_with_a_fixed_type(world, path, content_type):
    response = owner_client(world).get(world.fill(path))
    assert response.status_code == 200
    served = response["Content-Type"].split(";")[0].strip()
    assert served == content_type
    assert served in SAFE_TYPES
    assert response["Content-Disposition"].startswith("attachment;")
    assert re.search(r'filename="[\w.\-]+"', response["Content-Disposition"])
    assert response["X-Content-Type-Options"] == "nosniff"


def test_every_file_route_is_checked():
    """The routes above are every route of the matrix that answers with a file."""
    file_routes = {
        "api/v1/^predictions/(?P<pk>[^/.]+)/image/$",
        "api/v1/^inference-jobs/(?P<pk>[^/.]+)/results/(?P<kind>csv|json)/$",
        "api/v1/^datasets/(?P<pk>[^/.]+)/images/(?P<split>train|val|test)/(?P<index>\\d+)/$",
        "api/v1/models/<int:pk>/card/",
        "api/v1/models/<int:pk>/export/",  # a zip download: see test_registry's export tests
        "api/v1/models/compare/",
        "models/compare/",
    }
    assert file_routes <= set(MATRIX)


def test_stored_image_never_served_as_markup(world):
    """Even a row whose recorded type is markup is served as a download that is not sniffed."""
    from classifier.models import Prediction

    Prediction.objects.filter(pk=world.ids["a_prediction"]).update(image_content_type="")
    response = owner_client(world).get(world.fill("/api/v1/predictions/{a_prediction}/image/"))
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"].startswith("attachment;")
    assert response["X-Content-Type-Options"] == "nosniff"


# --- HTML pages ----------------------------------------------------------------------------------


class InlineScripts(HTMLParser):
    """Collects inline scripts that a browser would run (JSON data blocks are not run)."""

    def __init__(self):
        super().__init__()
        self.inline: list[str] = []
        self.handlers: list[str] = []
        self._open: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.handlers += [f"<{tag} {name}>" for name in attrs if name.startswith("on")]
        if tag == "script" and "src" not in attrs and attrs.get("type") not in (
            "application/json", "application/ld+json", "text/template"
        ):
            self._open = attrs

    def handle_data(self, data):
        if self._open is not None and data.strip():
            self.inline.append(data.strip()[:80])

    def handle_endtag(self, tag):
        if tag == "script":
            self._open = None


def directives(policy: str) -> dict[str, list[str]]:
    parsed = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            parsed[words[0].lower()] = words[1:]
    return parsed


def assert_safe_page(response, where: str) -> None:
    assert response["X-Content-Type-Options"] == "nosniff", where
    policy = response.get("Content-Security-Policy")
    assert policy, f"{where}: no Content-Security-Policy"
    parsed = directives(policy)
    scripts = parsed.get("script-src", parsed.get("default-src"))
    assert scripts, f"{where}: the policy does not restrict scripts"
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts, where
    assert "*" not in scripts and "data:" not in scripts, where
    assert parsed.get("object-src") == ["'none'"], where
    assert "frame-ancestors" in parsed, where
    parser = InlineScripts()
    parser.feed(response.content.decode())
    assert not parser.inline, f"{where}: inline scripts the policy blocks: {parser.inline}"
    assert not parser.handlers, f"{where}: inline event handlers: {parser.handlers}"


def html_page_paths() -> list[str]:
    """Every page of the matrix that a user A may GET and that answers with HTML."""
    paths = []
    for probes in MATRIX.values():
        for probe in probes:
            if probe.method == "get" and probe.expect.get(A) == 200:
                paths.append(probe.path)
    return paths


def test_every_html_page_has_a_policy_without_inline_scripts(world):
    client = owner_client(world)
    checked = 0
    for template in html_page_paths():
        path = world.fill(template)
        response = client.get(path)
        if not response["Content-Type"].startswith("text/html"):
            continue
        assert_safe_page(response, path)
        checked += 1
    assert checked >= 15
    assert_safe_page(Client().get("/login/"), "/login/ (anonymous)")


def test_admin_pages_have_the_policy(world):
    admin = UserFactory(username="root", superuser=True)
    client = Client()
    client.force_login(admin)
    paths = [reverse("admin:index"), reverse("admin:classifier_dataset_changelist"),
             reverse("admin:classifier_dataset_change", args=[world.ids["a_dataset"]]),
             reverse("admin:classifier_modelversion_changelist"),
             reverse("admin:auth_user_changelist")]
    for path in paths:
        response = client.get(path)
        assert response.status_code == 200, path
        policy = directives(response["Content-Security-Policy"])
        assert "'unsafe-inline'" not in policy.get("script-src", policy.get("default-src")), path
        assert response["X-Content-Type-Options"] == "nosniff", path
    anonymous = Client().get(reverse("admin:login"))
    assert "Content-Security-Policy" in anonymous


def test_staff_sees_the_same_headers(world):
    client = Client()
    client.force_login(world.users[STAFF])
    response = client.get(world.fill("/api/v1/inference-jobs/{a_batch}/results/csv/"))
    assert response["Content-Disposition"].startswith("attachment;")
    assert response["X-Content-Type-Options"] == "nosniff"
