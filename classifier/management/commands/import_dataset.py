import argparse
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from classifier import services
from classifier.models import Visibility

# The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


class Command(BaseCommand):
    help = (
        "Import a dataset file: a .npz in the MedMNIST layout, or a .zip of class-named image "
        "folders (optionally under train/, val/, test/). A progress bar follows the images of a "
        ".zip on a terminal."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path, help="The .npz or .zip file.")
        parser.add_argument("--owner", help="Username of the owner (default: the first admin).")
        parser.add_argument("--name", default="",
                            help="Name shown on the pages (default: from the file name).")
        parser.add_argument("--public", action="store_true",
                            help="Visible to every user (default: the owner and staff only).")
        parser.add_argument("--class-names", metavar="NAMES",
                            help="Comma-separated class names in label order (default: the "
                                 "folder names of a .zip, generic names for a .npz).")
        parser.add_argument("--image-size", type=int, metavar="PIXELS",
                            help="Resize the images of a .zip to PIXELS x PIXELS (8-4096); not "
                                 "for a .npz, which keeps the size of its arrays.")
        parser.add_argument("--seed", type=non_negative_int, default=0,
                            help="Seed of the stratified 70/10/20 split of a .zip without "
                                 "train/, val/, test/ folders (default: 0).")

    def handle(self, *args, path: Path, **options):
        if not path.exists():
            raise CommandError(f"{path} does not exist")
        if not path.is_file():
            raise CommandError(f"{path} is not a file: give a .npz or .zip file")
        users = get_user_model().objects
        if options["owner"]:
            owner = users.filter(username=options["owner"]).first()
            if owner is None:
                raise CommandError(f"no user '{options['owner']}': pass the username of an "
                                   "existing account")
        else:
            owner = users.filter(is_superuser=True).order_by("pk").first()
            if owner is None:
                raise CommandError("no owner: pass --owner USERNAME, or create an admin first "
                                   "(manage.py ensure_admin)")
        try:
            fh = path.open("rb")
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from exc
        bar = tqdm(total=0, unit="img", desc=f"Reading {path.name}", disable=None)

        def progress(done: int, total: int) -> None:
            if bar.total != total:
                bar.reset(total=total)
            bar.update(done - bar.n)  # redrawn at most every 0.1 s, not once per image

        try:
            with fh:
                dataset = services.dataset_import(
                    source=fh, filename=path.name, owner=owner, name=options["name"],
                    visibility=Visibility.PUBLIC if options["public"] else Visibility.PRIVATE,
                    class_names=([name.strip() for name in options["class_names"].split(",")]
                                 if options["class_names"] else None),
                    seed=options["seed"], image_size=options["image_size"], progress=progress,
                )
        except services.DatasetImportError as exc:
            raise CommandError(str(exc)) from exc
        except KeyboardInterrupt:
            raise CommandError(f"interrupted: {path.name} was not imported",
                               returncode=INTERRUPTED) from None
        finally:
            bar.close()
        self.stdout.write(self.style.SUCCESS(
            f"Imported {dataset.name} (id {dataset.pk}): {dataset.split_counts}, "
            f"{dataset.num_classes} classes, sha256 {dataset.sha256[:16]}…"
        ))
