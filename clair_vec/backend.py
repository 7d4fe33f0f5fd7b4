"""``clair_vec.backend`` is ``clair_vec.store.backend``: the backend contract a plugin implements, at the path plugins and
users have always imported it from. The same module object, not a copy: patching one patches both."""

import sys

from clair_vec.store import backend as _module

sys.modules[__name__] = _module
