from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from classifier import services
from classifier.models import Visibility


class Command(BaseCommand):
    help = "Import a dataset file (.npz in the MedMNIST layout, or a .zip of class folders)."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--owner", help="Username of the owner (default: first superuser).")
        parser.add_argument("--name", default="")
        parser.add_argument("--public", action="store_true", help="Visible to every user.")
        parser.add_argument("--class-names", help="Comma-separated class names in label order.")
        parser.add_argument("--image-size", type=int, help="Resize zip images to this size.")
        parser.add_argument("--seed", type=int, default=0, help="Seed of the stratified split.")

    def handle(self, *args, path: Path, **options):
        if not path.is_file():
            raise CommandError(f"{path} does not exist or is not a file")
        users = get_user_model().objects
        owner = (users.filter(username=options["owner"]).first() if options["owner"]
                 else users.filter(is_superuser=True).order_by("pk").first())
        if owner is None:
            raise CommandError("no owner: pass --owner USERNAME (or create a superuser first)")
        bar = tqdm(total=0, unit="img", desc=f"Reading {path.name}", disable=None)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            with path.open("rb") as fh:
                dataset = services.dataset_import(
                    source=fh, filename=path.name, owner=owner, name=options["name"],
                    visibility=Visibility.PUBLIC if options["public"] else Visibility.PRIVATE,
                    class_names=([name.strip() for name in options["class_names"].split(",")]
                                 if options["class_names"] else None),
                    seed=options["seed"], image_size=options["image_size"], progress=progress,
                )
        except services.DatasetImportError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            bar.close()
        self.stdout.write(self.style.SUCCESS(
            f"Imported {dataset.name} (id {dataset.pk}): {dataset.split_counts}, "
            f"{dataset.num_classes} classes, sha256 {dataset.sha256[:16]}…"
        ))
