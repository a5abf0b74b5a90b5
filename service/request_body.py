"""TRANSITIONAL: ``read_body`` moved to :mod:`sepconv.service.rest.body`; this name stays only until
``service/profiling_api.py`` (another area) imports it from there. Delete then."""

from sepconv.service.rest.body import read_body

__all__ = ["read_body"]
