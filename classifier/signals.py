"""Stored files follow their rows.

The services delete a row's files themselves, but rows also go by cascade: a user deleted in the
admin console takes their datasets, models, predictions and jobs with them, and a deleted model
takes its evaluations. :func:`delete_files_with_rows` connects a ``post_delete`` receiver that
deletes the row's stored files once the deleting transaction commits (nothing is deleted when
it rolls back). A file that another row still names is kept.
"""

from __future__ import annotations

import logging

from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models.signals import post_delete

logger = logging.getLogger(__name__)


def _delete_unreferenced(model, field: str, name: str) -> None:
    if model._default_manager.filter(**{field: name}).exists():
        return  # another row names the same file
    try:
        default_storage.delete(name)
    except OSError:  # the row is gone already; a leftover file is logged, not raised
        logger.warning("could not delete %s from storage", name, exc_info=True)


def delete_files_with_rows(model, *fields: str) -> None:
    """Delete the files in ``fields`` of each deleted ``model`` row after the commit."""

    def receiver(sender, instance, using, **kwargs):
        for field in fields:
            name = getattr(instance, field).name
            if name:
                transaction.on_commit(
                    lambda field=field, name=name: _delete_unreferenced(model, field, name),
                    using=using,
                )

    post_delete.connect(receiver, sender=model, weak=False,
                        dispatch_uid=f"files-of-{model._meta.label_lower}")
