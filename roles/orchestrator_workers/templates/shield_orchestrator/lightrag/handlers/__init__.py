"""The job types' handlers besides ingestion (the feeder, ../feeder.py): a delete
job's document references and a replace job's retire (delete.py), and a replace
job's chunks held until that retire is done (replace.py). The processor routes
each task to its handler by the task's op."""

from .delete import DocumentDeleter, Removals, patch_rebuild_attribution
from .replace import AfterRetire

__all__ = ["AfterRetire", "DocumentDeleter", "Removals", "patch_rebuild_attribution"]
