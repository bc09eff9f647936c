"""medml: the Django-free machine-learning core of MedPlatform.

Everything here is plain Python, numpy and Keras. It never imports Django, so it runs the same in
a Celery worker, a notebook, a benchmark or a unit test.
"""

__version__ = "0.1.0"
