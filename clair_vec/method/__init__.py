"""The CLAIR method: frozen CLIP features -> CLAIR head -> closed-form domain mapping.

Owns the foundation model (open_clip loading and encoding), domain prompts and learnable prompt
context, CLIP pseudo-labels and their confidence, the contrastive losses, the head, the text-only
mapping, the method's configuration, the retrieval metrics of the spec (§5.5) and the deployable
checkpoint (:class:`~clair_vec.method.model.ClairModel`, read without torch through
:mod:`~clair_vec.method.model_card`).

May import: :mod:`clair_vec.errors` and :mod:`clair_vec.progress`. Never imports the store,
datasets, retrieval, the service, training, evaluation or Ray: the model knows
nothing of databases. Nothing here is imported eagerly, so ``model_card`` reads a checkpoint's
metadata without loading torch.
"""
