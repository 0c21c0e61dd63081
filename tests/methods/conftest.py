"""One torch thread for the estimator tests (tiny models on a shared 2-core box)."""

from __future__ import annotations

import pytest

from tests.conftest import one_torch_thread

one_thread = pytest.fixture(autouse=True, scope="package", name="one_thread")(one_torch_thread)
