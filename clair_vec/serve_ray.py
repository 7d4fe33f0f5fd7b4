"""``clair_vec.serve_ray`` is ``clair_vec.service.ray_serve``: the Ray Serve deployment, at the path
``serve run clair_vec.serve_ray:build ...`` has always named. The same module object, not a copy:
patching one patches both."""

import sys

from clair_vec.service import ray_serve as _module

sys.modules[__name__] = _module
