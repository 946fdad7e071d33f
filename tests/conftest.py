import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import frameworks  # noqa: E402


@pytest.fixture(scope="session", params=list(frameworks.ADAPTERS))
def fw(request):
    """Each test that takes `fw` runs once per framework."""
    return frameworks.ADAPTERS[request.param]()
