"""Training CLAIR: cached CLIP features of a dataset, the training loop, rotating folds of the seen
classes (``folds``) and the per-query-domain model selection against raw CLIP on them
(``selection``), the single-process job behind ``clair-vec train`` and the demo, the stand-in CLIP
bootstrap, and the same trainer on Ray Train (``ray_train``, used by ``ray_jobs/train.py``).

May import: :mod:`clair_vec.method`, :mod:`clair_vec.datasets`, :mod:`clair_vec.errors`,
:mod:`clair_vec.progress`, and Ray (lazily, in ``ray_train`` only). Never imports the store,
retrieval or the service: a trained model is a checkpoint directory, not a collection.
"""
