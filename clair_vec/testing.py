"""``clair_vec.testing`` is ``clair_vec.store.testing``: the conformance suite (BackendConformance), at the path plugins and
users have always imported it from. The same module object, not a copy: patching one patches both."""

import sys

from clair_vec.store import testing as _module

sys.modules[__name__] = _module
