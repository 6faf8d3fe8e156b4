"""Pytest plugins shared by several test areas (registered in tests/conftest.py)."""
