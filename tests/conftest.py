"""Shared test setup. Area fixtures live in tests/fixtures/*.py and are loaded for every test."""

from pathlib import Path

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)
