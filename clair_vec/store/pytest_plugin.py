"""The ``pytest11`` entry point of clair_vec: makes pytest rewrite the asserts of the backend
conformance suite (:mod:`clair_vec.store.testing`, imported as ``clair_vec.plugin.BackendConformance``), so a failing promise shows the values it compared.

Registered by name rather than by making the suite itself the entry point: pytest
marks an entry-point module for rewriting from its distribution's file list, which an editable
install (``pip install -e``) does not have, so the suite's asserts would stay bare there.
"""

import pytest

pytest.register_assert_rewrite("clair_vec.store.testing")
