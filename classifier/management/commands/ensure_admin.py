import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Create the first admin account if no admin exists; with one, do nothing (safe to run "
        "again). Takes DJANGO_SUPERUSER_USERNAME / DJANGO_SUPERUSER_PASSWORD / "
        "DJANGO_SUPERUSER_EMAIL from the environment, else creates 'admin' with a random password "
        "written to admin-password.txt in the var folder (MEDPLATFORM_VAR_DIR)."
    )

    def handle(self, *args, **options):
        users = get_user_model().objects
        password_file = settings.VAR_DIR / "admin-password.txt"
        if users.filter(is_superuser=True).exists():
            hint = f" (first password in {password_file})" if password_file.exists() else ""
            self.stdout.write(f"An admin account already exists{hint}.")
            return
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME", "admin").strip()
        if not username:
            raise CommandError("DJANGO_SUPERUSER_USERNAME is empty: set it to the admin's "
                               "username, or unset it for 'admin'")
        if users.filter(username=username).exists():
            raise CommandError(
                f"a user '{username}' exists but is not an admin, so no admin was created: set "
                "DJANGO_SUPERUSER_USERNAME to a free username (or make that account an admin "
                "with manage.py shell) and run ensure_admin again")
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        generated = not password
        password = password or secrets.token_urlsafe(12)
        users.create_superuser(
            username=username, email=os.environ.get("DJANGO_SUPERUSER_EMAIL", ""), password=password
        )
        if generated:
            password_file.unlink(missing_ok=True)  # a stale file of an earlier installation
            # Readable by the owner only from its creation: never a moment with wider rights.
            descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.fchmod(descriptor, 0o600)
            with os.fdopen(descriptor, "w") as fh:
                fh.write(f"{username}\n{password}\n")
            self.stdout.write(self.style.SUCCESS(
                f"Created admin account. Log in as '{username}' with password '{password}' "
                f"(also saved in {password_file})."
            ))
        else:
            self.stdout.write(self.style.SUCCESS(
                f"Created admin account '{username}' from DJANGO_SUPERUSER_* settings."
            ))
