"""Helpers for the test-suite (imported as ``support``: pytest puts ``tests/`` on ``sys.path``
because ``tests/conftest.py`` lives in a directory without ``__init__.py``)."""
