"""A minimal Django project on the ``pgpoolkit.django`` backend, run by tests/test_django.py."""
