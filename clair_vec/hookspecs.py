"""``clair_vec.hookspecs`` is ``clair_vec.store.hookspecs``: the plugin hooks, at the path plugins and
users have always imported it from. The same module object, not a copy: patching one patches both."""

import sys

from clair_vec.store import hookspecs as _module

sys.modules[__name__] = _module
