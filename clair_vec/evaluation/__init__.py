"""How good a model is: zero-shot evaluation of a checkpoint against raw CLIP on the classes it
held out, the HTML report, the spec's ablation table (§6.3), the diagnostics behind the
``confidence_norm`` and ``head_center`` options, and the study of the shipped model against raw
CLIP on real images over seeds and class splits (``selection_study``).

May import: :mod:`clair_vec.training` (CLIP features, the trainer for ablations),
:mod:`clair_vec.method`, :mod:`clair_vec.datasets`. Never imports the store, retrieval or the service:
evaluation is exact NumPy retrieval, independent of any database.
"""
