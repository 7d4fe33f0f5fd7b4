"""Vectors by id: ``vectors()`` returns what was written, in the order asked, names the ids it
lacks, and raises CapabilityError where the backend does not implement it."""

from __future__ import annotations

import numpy as np
import pytest

from clair_vec.errors import CapabilityError, RecordNotFoundError
from clair_vec.store.testing.support import Promises, _short


class VectorPromises(Promises):
    """Stored vectors come back by id (an optional capability)."""

    def test_vectors_by_id_come_back_as_written_and_missing_ids_are_named(self, backend, info, filled):
        ids = [r.id for r in filled[:7]]
        if not backend.supports("vectors"):
            with pytest.raises(CapabilityError, match="_vectors"):
                backend.vectors(info.name, ids)
            pytest.skip("the backend does not implement _vectors (vectors() raises CapabilityError, as it must)")
        got = backend.vectors(info.name, list(reversed(ids)))
        assert list(got) == list(reversed(ids)), f"vectors() must answer in the order asked: {_short(got)}"
        for r in filled[:7]:
            v = got[r.id]
            assert v.dtype == np.float32 and v.shape == (self.dim,), f"vector of {r.id[:8]} came back as {v.dtype} {v.shape}"
            err = float(np.abs(v - r.vector).max())
            assert err < 1e-5, (
                f"the vector stored for {r.id[:8]} came back {err:.2g} away from the unit vector written (float32 "
                "precision expected; engines may normalise, and these vectors are unit length already)"
            )
        with pytest.raises(RecordNotFoundError) as missing:
            backend.vectors(info.name, ids[:2] + ["absent_one", "absent_two"])
        assert missing.value.ids == ["absent_one", "absent_two"], f"RecordNotFoundError.ids is {missing.value.ids}"
        assert "absent_one" in str(missing.value) and "2 of the 4" in str(missing.value), str(missing.value)
