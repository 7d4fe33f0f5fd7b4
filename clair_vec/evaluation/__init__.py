"""How good a model is: zero-shot evaluation of a checkpoint against raw CLIP on the classes it
held out, the HTML report, the spec's ablation table (§6.3) and the diagnostics behind the
``confidence_norm`` and ``head_center`` options.

May import: :mod:`clair_vec.training` (CLIP features, the trainer for ablations),
:mod:`clair_vec.method`, :mod:`clair_vec.datasets`. Never imports the store, retrieval or the service:
evaluation is exact NumPy retrieval, independent of any database.
"""
