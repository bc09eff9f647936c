from django.apps import AppConfig


class MedplatformConfig(AppConfig):
    name = "medplatform"
    verbose_name = "Platform"

    def ready(self):
        from medplatform import auth, authentication  # noqa: F401  (auth: its signal receivers)

        authentication.connect_signals()
