"""The serving benchmark's baseline: one bare DRF view that decodes an upload and predicts.

No authentication, throttling, database or storage: only the work a prediction cannot avoid
(Pillow decoding through :func:`medml.images.decode_upload` and
:func:`medml.images.to_model_input`, then one :class:`medml.infer.Predictor` call). It is a WSGI
application of its own (``bench.bare_app:application``), configured with
``settings.configure``, so the platform's URLs and settings are untouched. The platform's
``ServerTimingMiddleware`` is its only middleware, so both servers report time the same way.

Environment (set by :mod:`bench.serving`):
    BENCH_BARE_MODEL: path of the ``.keras`` file.
    BENCH_BARE_PREPROCESSING: the dataset's ``source_preprocessing`` as JSON (default ``{}``).
"""

from __future__ import annotations

import json
import os
import threading

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-bare-app-local-only",
        ALLOWED_HOSTS=["127.0.0.1"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework"],
        MIDDLEWARE=["medplatform.middleware.ServerTimingMiddleware"],
        DATABASES={},
        USE_TZ=True,
        DATA_UPLOAD_MAX_MEMORY_SIZE=10 * 1024 * 1024,
        FILE_UPLOAD_MAX_MEMORY_SIZE=5 * 1024 * 1024,
        REST_FRAMEWORK={
            "DEFAULT_AUTHENTICATION_CLASSES": [],
            "DEFAULT_PERMISSION_CLASSES": [],
            "DEFAULT_THROTTLE_CLASSES": [],
            "UNAUTHENTICATED_USER": None,
        },
    )
    django.setup()

import numpy as np
from django.core.wsgi import get_wsgi_application
from django.urls import path
from rest_framework import parsers
from rest_framework.response import Response
from rest_framework.views import APIView

from medml import images as medml_images

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 4096 * 4096

_predictor = None
_lock = threading.Lock()


def predictor():
    """The model, loaded on first use (as the platform does), once per worker process."""
    global _predictor
    with _lock:
        if _predictor is None:
            from medml.infer import Predictor

            # The platform's request path: ONNX Runtime with PREDICTION_THREADS (default 1).
            _predictor = Predictor.from_file(os.environ["BENCH_BARE_MODEL"], runtime="onnxruntime",
                                             threads=int(os.environ.get("PREDICTION_THREADS", "1")))
        return _predictor


class PredictView(APIView):
    authentication_classes = []
    permission_classes = []
    throttle_classes = []
    parser_classes = [parsers.MultiPartParser]

    def post(self, request):
        model = predictor()
        height, width, channels = model.input_shape
        upload = request.FILES["images"]
        image = medml_images.decode_upload(upload.read(), max_pixels=MAX_PIXELS, max_bytes=MAX_BYTES)
        try:
            array, warnings = medml_images.to_model_input(
                image, height=height, width=width, channels=channels,
                preprocessing=json.loads(os.environ.get("BENCH_BARE_PREPROCESSING", "{}")),
            )
        finally:
            image.close()
        probabilities = model.predict(array[np.newaxis])[0]
        return Response({"predicted_index": int(np.argmax(probabilities)),
                         "probabilities": [float(p) for p in probabilities],
                         "warnings": warnings}, status=201)


urlpatterns = [path("predict/", PredictView.as_view())]

application = get_wsgi_application()
