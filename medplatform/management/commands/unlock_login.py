from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from medplatform import auth


class Command(BaseCommand):
    help = (
        "Lift the log-in locks of a username and forget its failed attempts, from every address "
        "(medplatform/auth.py). An address locked for guessing many usernames stays locked until "
        "its lock ends. The locks live in Redis: run it with the web server's REDIS_URL (or "
        "MEDPLATFORM_VAR_DIR, for the embedded Redis of `make run`)."
    )

    def add_arguments(self, parser):
        parser.add_argument("username", help="The username, as typed at log-in (case-insensitive).")

    def handle(self, *args, username: str, **options):
        if not username.strip():
            raise CommandError("a username is required")
        try:
            auth.unlock(username)
        except Exception as exc:  # the cache: the operator must know it was not done
            raise CommandError(f"could not reach the cache to unlock '{username}': {exc}") from exc
        exists = get_user_model().objects.filter(username__iexact=username.strip()).exists()
        note = "" if exists else " (no account has this username; its counts are cleared anyway)"
        self.stdout.write(self.style.SUCCESS(f"Log-in unlocked for '{username.strip()}'{note}."))
        if not shares_a_cache():
            self.stderr.write(self.style.WARNING(
                "Warning: no shared cache was found (REDIS_URL is unset and the embedded Redis "
                "of this var folder is not running), so the web server cannot see this unlock. "
                "Run unlock_login with the REDIS_URL and MEDPLATFORM_VAR_DIR the web server uses."))


def shares_a_cache() -> bool:
    """Whether this process's cache is one other processes see (Redis), not its own memory."""
    return "locmem" not in settings.CACHES["default"]["BACKEND"].lower()
