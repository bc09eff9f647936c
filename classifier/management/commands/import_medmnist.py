from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from classifier import services
from classifier.models import Dataset
from medml import dataset_io

# The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def known_flags() -> list[str] | None:
    """The 2D datasets the installed ``medmnist`` package describes; ``None`` without it."""
    table = dataset_io._medmnist_info_table()
    if table is None:
        return None
    return sorted(flag for flag in table if not flag.endswith("3d"))


class Command(BaseCommand):
    help = (
        "Import official MedMNIST datasets as built-ins visible to every user, from MEDMNIST_DIR "
        "(or --folder) or, when the file is not there, through the official download. A dataset "
        "already imported is left as it is, so running it again is safe. Exits non-zero when a "
        "dataset could not be imported (with --keep-going, after trying the others)."
    )

    def add_arguments(self, parser):
        parser.add_argument("flags", nargs="*", metavar="DATASET",
                            help="MedMNIST 2D datasets, e.g. bloodmnist breastmnist.")
        parser.add_argument("--all", action="store_true",
                            help="The datasets in MEDMNIST_IMPORT (default: bloodmnist, "
                                 "breastmnist).")
        parser.add_argument("--size", type=int, default=28, choices=[28, 64, 128, 224],
                            help="Image size of the files to import (default: 28).")
        parser.add_argument("--folder", help="Folder of official .npz files (default: "
                                             "MEDMNIST_DIR).")
        parser.add_argument("--no-download", action="store_true",
                            help="Only look in the folder; never download.")
        parser.add_argument("--keep-going", action="store_true",
                            help="Report a dataset that cannot be imported and go on with the "
                                 "others.")

    def handle(self, *args, flags, **options):
        flags = flags or (list(settings.MEDMNIST_IMPORT) if options["all"] else [])
        flags = list(dict.fromkeys(flag.strip().lower() for flag in flags if flag.strip()))
        if not flags:
            raise CommandError("name the datasets to import (e.g. bloodmnist), or pass --all")
        known = known_flags()
        unknown = [flag for flag in flags if known is not None and flag not in known]
        if unknown:
            raise CommandError(f"unknown MedMNIST dataset{'s' if len(unknown) > 1 else ''} "
                               f"{', '.join(unknown)}; choose from {', '.join(known)}")
        folder = Path(options["folder"] or settings.MEDMNIST_DIR)
        if options["folder"] and not folder.is_dir():
            raise CommandError(f"--folder {folder} is not a folder")
        size = options["size"]
        failures = []
        bar = tqdm(flags, desc="MedMNIST", unit="dataset", disable=None)
        try:
            for flag in bar:
                try:
                    dataset, created = self._import(flag, size, folder,
                                                    download=not options["no_download"])
                except services.DatasetImportError as exc:
                    failures.append(flag)
                    message = f"{flag}: not imported: {exc}"
                    if not options["keep_going"]:
                        raise CommandError(message) from exc
                    bar.write(self.style.WARNING(message), file=self.stderr._out)
                    continue
                state = "imported" if created else "already present"
                bar.write(self.style.SUCCESS(
                    f"{dataset.name}: {state} ({dataset.total_images} images, "
                    f"sha256 {dataset.sha256[:16]}…)"
                ), file=self.stdout._out)
        except KeyboardInterrupt:
            raise CommandError("interrupted: the dataset being imported was not stored",
                               returncode=INTERRUPTED) from None
        finally:
            bar.close()
        if failures:
            raise CommandError(
                f"{len(failures)} dataset(s) not imported ({', '.join(failures)}); the platform "
                f"runs without them. Put the official .npz files in {folder} (MEDMNIST_DIR) and "
                "run import_medmnist again, or upload a dataset from the Datasets page.")

    def _import(self, flag: str, size: int, folder: Path, *, download: bool):
        filename = services.medmnist_filename(flag, size)
        if not (folder / filename).is_file():
            # Already imported (say, downloaded on an earlier run): nothing to fetch again, and
            # nothing to fail when offline.
            existing = Dataset.objects.filter(is_builtin=True, source_detail=filename).first()
            if existing is not None:
                return existing, False
        download_bar = None

        def downloaded(received: int, expected: int) -> None:
            nonlocal download_bar
            if download_bar is None:  # a bar only when something is downloaded
                download_bar = tqdm(desc=f"{flag} download", total=expected or None, unit="B",
                                    unit_scale=True, unit_divisor=1024, leave=False, disable=None)
            download_bar.update(received - download_bar.n)

        try:
            return services.builtin_dataset_import(flag=flag, size=size, folder=folder,
                                                   download=download, download_progress=downloaded)
        finally:
            if download_bar is not None:
                download_bar.close()
