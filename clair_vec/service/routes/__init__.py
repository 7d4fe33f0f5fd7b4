"""The routes of the search service, one module per group; each builds an APIRouter over the
:class:`~clair_vec.service.context.ServiceContext` of its app."""
