from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from classifier import services


class Command(BaseCommand):
    help = (
        "Import official MedMNIST datasets as built-ins, from MEDMNIST_DIR or, when online, "
        "through the official download."
    )

    def add_arguments(self, parser):
        parser.add_argument("flags", nargs="*", help="e.g. bloodmnist breastmnist")
        parser.add_argument("--all", action="store_true", help="The datasets in MEDMNIST_IMPORT.")
        parser.add_argument("--size", type=int, default=28, choices=[28, 64, 128, 224])
        parser.add_argument("--folder", help="Folder of .npz files (default: MEDMNIST_DIR).")
        parser.add_argument("--no-download", action="store_true")
        parser.add_argument("--keep-going", action="store_true",
                            help="Report a dataset that cannot be imported and go on.")

    def handle(self, *args, flags, **options):
        flags = flags or (settings.MEDMNIST_IMPORT if options["all"] else [])
        if not flags:
            raise CommandError("name the datasets to import, or pass --all")
        failures = 0
        for flag in tqdm(flags, desc="MedMNIST", unit="dataset", disable=None):
            try:
                dataset, created = services.builtin_dataset_import(
                    flag=flag.lower(), size=options["size"], folder=options["folder"],
                    download=not options["no_download"],
                )
            except services.DatasetImportError as exc:
                failures += 1
                message = f"{flag}: not imported: {exc}"
                if not options["keep_going"]:
                    raise CommandError(message) from exc
                self.stderr.write(self.style.WARNING(message))
                continue
            state = "imported" if created else "already present"
            self.stdout.write(self.style.SUCCESS(
                f"{dataset.name}: {state} ({dataset.total_images} images, "
                f"sha256 {dataset.sha256[:16]}…)"
            ))
        if failures:
            self.stdout.write(f"{failures} dataset(s) not imported; the platform runs without them.")
