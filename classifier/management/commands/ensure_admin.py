import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Create the first admin account if none exists. Takes DJANGO_SUPERUSER_USERNAME / "
        "DJANGO_SUPERUSER_PASSWORD / DJANGO_SUPERUSER_EMAIL from the environment, else creates "
        "'admin' with a random password written to var/admin-password.txt."
    )

    def handle(self, *args, **options):
        users = get_user_model().objects
        password_file = settings.VAR_DIR / "admin-password.txt"
        if users.filter(is_superuser=True).exists():
            hint = f" (first password in {password_file})" if password_file.exists() else ""
            self.stdout.write(f"An admin account already exists{hint}.")
            return
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME", "admin")
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        generated = not password
        password = password or secrets.token_urlsafe(12)
        users.create_superuser(
            username=username, email=os.environ.get("DJANGO_SUPERUSER_EMAIL", ""), password=password
        )
        if generated:
            password_file.write_text(f"{username}\n{password}\n")
            password_file.chmod(0o600)
            self.stdout.write(self.style.SUCCESS(
                f"Created admin account. Log in as '{username}' with password '{password}' "
                f"(also saved in {password_file})."
            ))
        else:
            self.stdout.write(self.style.SUCCESS(
                f"Created admin account '{username}' from DJANGO_SUPERUSER_* settings."
            ))
